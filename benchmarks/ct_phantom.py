"""A CT-like phantom dataset in the nnU-Net v2 raw layout, for benchmarks at the scale users bring (issue 27).

Each case is an abdominal CT of 512x512 voxels in-plane and 90-220 slices (0.65-0.95 mm in-plane, 2-5 mm slices,
drawn per case from a seeded generator, so the dataset is the same on every machine): air (-1000 HU) outside an
elliptical body with a fat layer (~-100 HU) around soft tissue (~40 HU), a vertebra with its canal, ribs and an
aorta, and the labelled organs: 1 liver (~60 HU, large, on the patient's right), 2 kidneys (~30 HU cortex, ~150 HU in
the cases with contrast), 3 spleen (~50 HU, left) and 4 lesion (0-3 small hypodense spheres of 5-25 mm inside the
liver, -10..20 HU; a lesion's label overrides the liver's). Every shape is a deformed ellipsoid whose implicit
function carries low-frequency waves, so organs differ from case to case. The image is smoothed in-plane (partial
volume) and carries Gaussian noise of 10-20 HU; it is stored as int16 HU, the labels as uint8, with real spacing and
origin (LPS, identity direction) through SimpleITK.

A volume is generated in slabs of slices and every shape is evaluated only inside its bounding box, so memory stays
well under 2 GB (the full volume of 512x512x300 int16 is 157 MB). ``imagesTs/`` holds one further volume of
512x512x300 (its label in ``labelsTs/``) for timing prediction. The dataset is written to a hidden folder beside the
output and renamed when complete, so that no one ever sees half a dataset.

Usage:

    python benchmarks/ct_phantom.py [OUTPUT_ROOT] [--cases 20] [--seed 0] [--test-slices 300] [--in-plane 512]
        [--slices 90 220] [--name Dataset601_CTPhantom]

``OUTPUT_ROOT`` defaults to ``autoseg_ct`` in the system's temporary folder (``benchmarks/locations.py``); the
dataset is ``OUTPUT_ROOT/NAME``. ``--in-plane`` and ``--slices`` make small phantoms of the same physical extent (the
spacing grows accordingly), for tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from locations import scratch_folder
from scipy import ndimage

LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "lesion": 4}
DATASET_NAME = "Dataset601_CTPhantom"
SLAB = 16  # slices generated at once
AIR = -1000.0


@dataclass
class Shape:
    """A deformed ellipsoid: inside where ``sum(((p - centre) / axes)^2) + waves(p) < 1`` (p in mm, LPS)."""

    centre: np.ndarray
    axes: np.ndarray
    hu: float
    label: int = 0
    waves: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (wave vector, amplitude, phase)
    taper: float = 0.0  # the y axis shrinks by this share towards +x (the liver's wedge)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The corners (mm) of a box holding the shape whatever its waves."""
        reach = self.axes * np.sqrt(1.0 + sum(abs(amplitude) for _, amplitude, _ in self.waves)) * (1 + self.taper)
        return self.centre - reach, self.centre + reach

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask on broadcastable coordinate arrays (mm)."""
        u = (x - self.centre[0]) / self.axes[0]
        y_axis = self.axes[1] * (1.0 - self.taper * np.clip(u, -1.0, 1.0))
        value = u * u + ((y - self.centre[1]) / y_axis) ** 2 + ((z - self.centre[2]) / self.axes[2]) ** 2
        for vector, amplitude, phase in self.waves:
            value = value + amplitude * np.sin(x * vector[0] + y * vector[1] + z * vector[2] + phase)
        return value < 1.0


@dataclass
class Case:
    """Geometry and content of one phantom volume."""

    size: tuple[int, int, int]  # x, y, z voxels
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    shapes: list[Shape]  # painted in order: later shapes override earlier ones
    ribs: tuple[float, float, float, float, float]  # centre x, centre y, semi-axis x, semi-axis y, period (mm)
    noise: float
    smoothing: float  # in-plane Gaussian sigma in voxels


def random_waves(rng: np.random.Generator, count: int, amplitude: float) -> list[tuple[np.ndarray, float, float]]:
    """Low-frequency deformation: plane waves of 60-220 mm wavelength in random directions."""
    waves = []
    for _ in range(count):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(60.0, 220.0)
        waves.append((direction * 2 * np.pi / wavelength, rng.uniform(0.3, 1.0) * amplitude, rng.uniform(0, 2 * np.pi)))
    return waves


def body_shapes(rng: np.random.Generator, field_of_view: float, length: float) -> tuple[list[Shape], tuple]:
    """Body, fat layer, soft tissue, spine, canal and aorta (no label); the rib ellipse."""
    a = rng.uniform(0.30, 0.42) * field_of_view
    b = a * rng.uniform(0.62, 0.78)
    cx, cy = rng.uniform(-0.05, 0.05) * field_of_view, rng.uniform(-0.06, 0.02) * field_of_view
    fat = rng.uniform(10.0, 28.0)
    long_axis = 10.0 * length  # bodies run through the whole volume
    body = Shape(np.array([cx, cy, 0.0]), np.array([a, b, long_axis]), rng.uniform(-110, -90),
                 waves=random_waves(rng, 2, 0.04))
    tissue = Shape(np.array([cx, cy, 0.0]), np.array([a - fat, b - fat * 0.8, long_axis]), rng.uniform(35, 45),
                   waves=random_waves(rng, 2, 0.05))
    spine_y = cy + (b - fat) * 0.70
    vertebra = Shape(np.array([cx, spine_y, 0.0]), np.array([19.0, 16.0, long_axis]), rng.uniform(800, 1000))
    marrow = Shape(np.array([cx, spine_y, 0.0]), np.array([15.5, 12.5, long_axis]), rng.uniform(400, 500))
    canal = Shape(np.array([cx, spine_y + 24.0, 0.0]), np.array([8.0, 7.0, long_axis]), rng.uniform(5, 20))
    aorta = Shape(np.array([cx + 12.0, spine_y - 28.0, 0.0]), np.array([11.0, 11.0, long_axis]),
                  rng.choice([rng.uniform(35, 50), rng.uniform(150, 250)]))
    ribs = (cx, cy, a - fat - 9.0, b - fat * 0.8 - 9.0, rng.uniform(28.0, 40.0))
    return [body, tissue, aorta, vertebra, marrow, canal], ribs


def organ_shapes(rng: np.random.Generator, body: Shape, length: float) -> list[Shape]:
    """Liver, kidneys, spleen and the liver's lesions, placed inside the body around a random abdominal height."""
    cx, cy = body.centre[0], body.centre[1]
    a, b = body.axes[0], body.axes[1]
    scale = rng.uniform(0.85, 1.15)
    height = rng.uniform(-0.15, 0.15) * min(length, 400.0)
    liver = Shape(np.array([cx - 0.42 * a, cy - 0.12 * b, height + 45.0]),
                  np.array([0.50 * a, 0.62 * b, 80.0 * scale]), rng.uniform(55, 65), LABELS["liver"],
                  random_waves(rng, 4, 0.22), taper=0.35)
    contrast = rng.random() < 0.5
    kidney_hu = rng.uniform(140, 170) if contrast else rng.uniform(25, 35)
    shapes = [liver]
    for side in (-1.0, 1.0):
        centre = np.array([cx + side * 0.42 * a, cy + 0.42 * b, height - 35.0 + rng.uniform(-15, 15)])
        kidney = Shape(centre, np.array([24.0, 20.0, 50.0]) * rng.uniform(0.9, 1.1), kidney_hu, LABELS["kidney"],
                       random_waves(rng, 2, 0.15))
        pelvis = Shape(centre + np.array([-side * 8.0, -4.0, 0.0]), np.array([9.0, 7.0, 22.0]),
                       rng.uniform(10, 25), LABELS["kidney"])
        shapes += [kidney, pelvis]
    shapes.append(Shape(np.array([cx + 0.55 * a, cy + 0.25 * b, height + 35.0]),
                        np.array([0.17 * a, 0.42 * b, 55.0]) * rng.uniform(0.85, 1.15), rng.uniform(45, 55),
                        LABELS["spleen"], random_waves(rng, 3, 0.2)))
    shapes += lesion_shapes(rng, liver)
    return shapes


def lesion_shapes(rng: np.random.Generator, liver: Shape) -> list[Shape]:
    """0-3 spheres of 5-25 mm diameter well inside the liver."""
    lesions = []
    for _ in range(rng.integers(0, 4)):
        for _attempt in range(50):
            centre = liver.centre + rng.uniform(-0.6, 0.6, size=3) * liver.axes
            if liver.inside(*(np.array([value]) for value in centre))[0] and \
                    liver.inside(*(np.array([value]) for value in centre * 0.9 + liver.centre * 0.1))[0]:
                radius = rng.uniform(2.5, 12.5)
                lesions.append(Shape(centre, np.array([radius, radius, radius]) * rng.uniform(0.85, 1.15, size=3),
                                     rng.uniform(-10, 20), LABELS["lesion"], random_waves(rng, 1, 0.1)))
                break
    return lesions


def draw_case(rng: np.random.Generator, in_plane: int = 512, slices: tuple[int, int] | None = None,
              fixed_slices: int | None = None) -> Case:
    """A random case; ``in_plane`` and ``slices`` (a range of slice counts) change the voxel count but not the
    physical extent."""
    spacing_xy = rng.uniform(0.65, 0.95)
    spacing_z = rng.uniform(2.0, 5.0) if fixed_slices is None else rng.uniform(2.0, 2.5)
    count = int(rng.integers(90, 221)) if fixed_slices is None else fixed_slices
    field_of_view = 512 * spacing_xy
    length = count * spacing_z
    z_count = count if slices is None else int(rng.integers(slices[0], slices[1] + 1))
    spacing = (field_of_view / in_plane, field_of_view / in_plane, length / z_count)
    context, ribs = body_shapes(rng, field_of_view, length)
    shapes = context + organ_shapes(rng, context[0], length)
    origin = (-field_of_view / 2 + spacing[0] / 2, -field_of_view / 2 + spacing[1] / 2 + rng.uniform(-30, 30),
              -length / 2 + spacing[2] / 2 + rng.uniform(-400, -200))
    shift = np.array([0.0, origin[1] + field_of_view / 2 - spacing[1] / 2, origin[2] + length / 2 - spacing[2] / 2])
    for shape in shapes:  # the scanner's table moves the patient: shapes follow the origin
        shape.centre = shape.centre + shift
    ribs = (ribs[0], ribs[1] + shift[1], ribs[2], ribs[3], ribs[4])
    return Case((in_plane, in_plane, z_count), spacing, origin, shapes, ribs, rng.uniform(10, 20),
                rng.uniform(0.5, 0.9))


def paint_slab(case: Case, first: int, last: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image (int16 HU) and label (uint8) of slices ``first:last``, arrays in SimpleITK's (z, y, x) order."""
    nx, ny, _ = case.size
    x = case.origin[0] + np.arange(nx, dtype=np.float32) * case.spacing[0]
    y = case.origin[1] + np.arange(ny, dtype=np.float32) * case.spacing[1]
    z = case.origin[2] + np.arange(first, last, dtype=np.float32) * case.spacing[2]
    image = np.full((last - first, ny, nx), AIR, dtype=np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    for index, shape in enumerate(case.shapes):
        low, high = shape.bounds()
        ix, iy, iz = (np.flatnonzero((axis >= low[k]) & (axis <= high[k])) for k, axis in enumerate((x, y, z)))
        if not (len(ix) and len(iy) and len(iz)):
            continue
        box = np.s_[iz[0]:iz[-1] + 1, iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1]
        zz, yy, xx = z[box[0]][:, None, None], y[box[1]][None, :, None], x[box[2]][None, None, :]
        mask = shape.inside(xx, yy, zz)
        if shape.label == LABELS["lesion"]:
            mask &= label[box] == LABELS["liver"]
        elif shape.label:  # organs replace soft tissue and vessels, never fat or bone
            mask &= (image[box] > -60) & (image[box] < 300)
        elif index >= 1:  # soft tissue lies inside the body, bones and vessels inside the soft tissue
            mask &= image[box] > (-500 if index == 1 else -60)
        image[box][mask] = shape.hu
        label[box][mask] = shape.label
        if index == 1:
            paint_ribs(case, image, x, y, z)
    image = ndimage.gaussian_filter(image, sigma=(0.0, case.smoothing, case.smoothing), mode="nearest")
    image += rng.normal(0.0, case.noise, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label


def paint_ribs(case: Case, image: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Rib cross-sections: small bone discs along an ellipse inside the fat layer, present in bands of slices."""
    cx, cy, a, b, period = case.ribs
    for angle in np.deg2rad(np.arange(-150, 151, 18)):
        if abs(np.rad2deg(angle)) < 40:  # no ribs in front of the belly
            continue
        px, py = cx + a * np.sin(angle), cy - b * np.cos(angle)
        present = np.sin(2 * np.pi * z / period + angle * 3.0) > 0.2
        ix = np.flatnonzero(np.abs(x - px) < 7.0)
        iy = np.flatnonzero(np.abs(y - py) < 7.0)
        if not (len(ix) and len(iy) and present.any()):
            continue
        disc = ((x[ix][None, :] - px) / 6.0) ** 2 + ((y[iy][:, None] - py) / 4.5) ** 2 < 1.0
        for k in np.flatnonzero(present):
            patch = image[k, iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1]
            patch[disc & (patch > -60)] = 700.0


def write_case(case: Case, seed: int, image_path: Path, label_path: Path) -> None:
    """Generate ``case`` slab by slab and write it with SimpleITK."""
    nx, ny, nz = case.size
    image = np.empty((nz, ny, nx), dtype=np.int16)
    label = np.empty((nz, ny, nx), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for first in range(0, nz, SLAB):
        last = min(nz, first + SLAB)
        image[first:last], label[first:last] = paint_slab(case, first, last, rng)
    for array, path in ((image, image_path), (label, label_path)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(case.spacing)
        volume.SetOrigin(case.origin)
        volume.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(volume, str(path), useCompression=True)


def generate(output: Path, *, cases: int = 20, seed: int = 0, test_slices: int = 300, in_plane: int = 512,
             slices: tuple[int, int] | None = None, verbose: bool = True) -> Path:
    """Write the dataset to ``output`` (a folder that must not exist yet) atomically; returns ``output``."""
    if output.exists():
        raise FileExistsError(f"{output} exists already")
    partial = output.parent / f".{output.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (partial / sub).mkdir(parents=True)
    for index in range(cases + (1 if test_slices else 0)):
        start = time.perf_counter()
        rng = np.random.default_rng([seed, index])
        test = index == cases
        case = draw_case(rng, in_plane, slices, fixed_slices=test_slices if test else None)
        name = f"ct_{index:03d}"
        images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        write_case(case, int(rng.integers(2 ** 31)), partial / images / f"{name}_0000.nii.gz",
                   partial / labels / f"{name}.nii.gz")
        if verbose:
            print(f"{images}/{name}: {case.size[0]}x{case.size[1]}x{case.size[2]} spacing "
                  f"{case.spacing[0]:.3f}x{case.spacing[1]:.3f}x{case.spacing[2]:.2f} mm, "
                  f"{len([s for s in case.shapes if s.label == LABELS['lesion']])} lesions, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    description = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": cases, "file_ending": ".nii.gz",
                   "name": output.name.split("_", 1)[-1],
                   "description": f"CT-like abdominal phantom (benchmarks/ct_phantom.py, "
                   f"seed {seed})"}
    (partial / "dataset.json").write_text(json.dumps(description, indent=4) + "\n")
    partial.rename(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_root", nargs="?", type=Path, default=scratch_folder("autoseg_ct"))
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-slices", type=int, default=300, help="slices of the imagesTs volume (0: none)")
    parser.add_argument("--in-plane", type=int, default=512, help="voxels along x and y")
    parser.add_argument("--slices", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="slice counts of small phantoms of the same physical extent (default: 90-220 at the "
                             "drawn 2-5 mm spacing)")
    parser.add_argument("--name", default=DATASET_NAME)
    arguments = parser.parse_args(argv)
    start = time.perf_counter()
    output = generate(arguments.output_root / arguments.name, cases=arguments.cases, seed=arguments.seed,
                      test_slices=arguments.test_slices, in_plane=arguments.in_plane,
                      slices=tuple(arguments.slices) if arguments.slices else None)
    print(f"{output}: {arguments.cases} training cases in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
