"""Preprocessing on the real shared datasets: per-case output, export round trips, storage, CLI, kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from model_helpers import as_configuration

from autoseg.data.raw_folder import load_raw_dataset
from autoseg.errors import UserError
from autoseg.io import case_arrays
from autoseg.io.images import read_image
from autoseg.preprocessing.preprocess_dataset import CHUNK_VOXEL_BUDGET, CaseTask, chunk_tasks, preprocess_dataset
from autoseg.preprocessing.storage import is_case_complete, load_preprocessed_case, write_preprocessed_case
from autoseg.records.plans import Configuration, Plans
from autoseg.records.preprocessed_case import preprocessed_case_ids
from autoseg.records.work_folder import WorkFolder
from autoseg.transforms.case import preprocess_case
from autoseg.transforms.export import export_prediction, probabilities_path_for
from autoseg.utils.locking import folder_lock

REPOSITORY = Path(__file__).resolve().parents[1]


def make_configuration(spacing, *, dimension=3, normalization=None):
    """One configuration in the plans.json schema of docs/design.md (preprocessing-relevant keys filled in)."""
    return {
        "dimension": dimension,
        "spacing": list(spacing),
        "median_shape": [36, 50, 35],
        "patch_size": [40, 56, 40][-dimension:],
        "batch_size": 2,
        "network": {"architecture": "plain_unet"},
        "normalization": normalization or [{"scheme": "zscore", "use_mask": False}],
        "resampling": {"anisotropic": False, "image_order": 3, "label_order": 1, "coarse_axis_order": 0},
        "batch_dice": False,
    }


def make_plans(configurations, *, transpose_forward=(0, 1, 2)):
    return {
        "dataset_name": "test",
        "plans_name": "handmade",
        "preset": "default",
        "gpu_memory_gb": 8,
        "transpose_forward": list(transpose_forward),
        "transpose_backward": [int(axis) for axis in np.argsort(transpose_forward)],
        "configurations": configurations,
    }


def record(plans: dict, name: str) -> Configuration:
    """The typed configuration ``name`` of a plans.json mapping (carrying the plans' axis order)."""
    return Plans.from_json(plans).configuration(name)


def case_files(root: Path, identifier: str) -> tuple[list[str], str]:
    return [str(root / "imagesTr" / f"{identifier}_0000.nii.gz")], str(root / "labelsTr" / f"{identifier}.nii.gz")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_real_hippocampus_case_is_normalised_cropped_and_sampled(hippocampus_root):
    images, label = case_files(hippocampus_root, "hippocampus_001")
    plans = make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0])})
    data, segmentation, properties = preprocess_case(images, label,
                                                     configuration=record(plans, "3d_fullres"))
    raw_label = read_image(label).array
    assert data.dtype == np.float32 and segmentation.dtype == np.int8
    assert data.shape[0] == 1 and segmentation.shape[0] == 1 and data.shape[1:] == segmentation.shape[1:]
    assert abs(float(data.mean())) < 1e-3 and abs(float(data.std()) - 1) < 1e-3  # per-image z-score
    assert properties["identifier"] == "hippocampus_001"
    assert properties["shape_before_crop"] == list(raw_label.shape)
    assert set(np.unique(segmentation)) <= {0, 1, 2}
    for value in ("1", "2"):
        locations = np.array(properties["class_locations"][value])
        # Fewer than 10k voxels per class here: every voxel of the class is listed, each really of that class.
        assert len(locations) == (segmentation[0] == int(value)).sum()
        assert (segmentation[0][tuple(locations.T)] == int(value)).all()
    again = preprocess_case(images, label, configuration=record(plans, "3d_fullres"))
    assert np.array_equal(again[0], data) and again[2] == properties  # deterministic, including the sample


@pytest.mark.parametrize("identifier", ["hippocampus_001", "hippocampus_017", "hippocampus_101"])
def test_hippocampus_export_round_trip_is_exact_with_a_transposed_plan(hippocampus_root, tmp_path, identifier):
    # Target spacing = native spacing, axes permuted: crop, transposition and their inverses must be exact.
    images, label = case_files(hippocampus_root, identifier)
    plans = make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0])}, transpose_forward=(2, 0, 1))
    configuration = record(plans, "3d_fullres")
    _, segmentation, properties = preprocess_case(images, label, configuration=configuration)
    original = read_image(label)
    assert tuple(segmentation.shape[1:]) == tuple(np.array(original.array.shape)[[2, 0, 1]])
    one_hot = np.stack([segmentation[0] == value for value in range(3)]).astype(np.float32)
    output = tmp_path / f"{identifier}.nii.gz"
    export_prediction(one_hot, properties, configuration=configuration, output_path=output)
    exported = read_image(output)
    assert exported.geometry == original.geometry
    assert np.array_equal(exported.array, original.array.astype(exported.array.dtype))


def test_hippocampus_export_round_trip_through_a_coarser_grid(hippocampus_root, tmp_path):
    plans = make_plans({"3d_lowres": make_configuration([1.6, 1.6, 1.6])})
    configuration = record(plans, "3d_lowres")
    for identifier in ("hippocampus_004", "hippocampus_020"):
        images, label = case_files(hippocampus_root, identifier)
        _, segmentation, properties = preprocess_case(images, label, configuration=configuration)
        assert properties["shape_after_resampling"] == [round(s / 1.6) for s in properties["shape_after_crop"]]
        logits = np.stack([segmentation[0] == value for value in range(3)]).astype(np.float32) * 20 - 10
        output = tmp_path / f"{identifier}.nii.gz"
        export_prediction(logits, properties, configuration=configuration, output_path=output)
        exported, original = read_image(output), read_image(label)
        assert exported.geometry == original.geometry
        for value in (1, 2):
            assert dice(exported.array == value, original.array == value) > 0.85


def test_hc18_export_round_trip_keeps_geometry_and_head(hc18_root, tmp_path):
    plans = make_plans({"2d": make_configuration([1.0, 0.129, 0.129], dimension=2)})
    configuration = record(plans, "2d")
    for identifier in ("002_HC", "237_HC", "803_HC"):
        images, label = case_files(hc18_root, identifier)
        _, segmentation, properties = preprocess_case(images, label, configuration=configuration)
        assert properties["spacing_after_resampling"][1:] == [0.129, 0.129]
        assert len(properties["class_locations"]["1"]) == 10_000  # bounded sample of a large class
        one_hot = np.stack([segmentation[0] == value for value in range(2)]).astype(np.float32)
        output = tmp_path / f"{identifier}.nii.gz"
        export_prediction(one_hot, properties, configuration=configuration, output_path=output,
                          save_probabilities=True)
        exported, original = read_image(output), read_image(label)
        assert exported.geometry == original.geometry
        assert dice(exported.array == 1, original.array == 1) > 0.99
        with np.load(probabilities_path_for(output), allow_pickle=False) as stored:
            probabilities = stored["probabilities"]
        assert probabilities.shape == (2, *original.array.shape)
        assert np.array_equal(np.argmax(probabilities, axis=0), exported.array)


def write_nifti(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_crop_to_filled_nonzero_region_and_masked_normalisations(tmp_path):
    image = np.zeros((20, 30, 40), dtype=np.float32)
    image[3:17, 5:25, 8:30] = np.random.default_rng(0).uniform(50, 150, size=(14, 20, 22))
    image[8:11, 12:15, 15:20] = 0  # a dark hole inside the body stays in the mask (holes are filled)
    write_nifti(image, tmp_path / "case_0000.nii.gz")
    masked = make_configuration([1.0, 1.0, 1.0], normalization=[{"scheme": "zscore", "use_mask": True}])
    data, _, properties = preprocess_case([tmp_path / "case_0000.nii.gz"], None, configuration=as_configuration(masked))
    assert properties["crop_bbox"] == [[3, 17], [5, 25], [8, 30]]
    assert data.shape == (1, 14, 20, 22)
    hole = data[0, 5:8, 7:10, 7:12]
    assert np.allclose(hole, hole.flat[0]) and hole.flat[0] < -2  # normalised like tissue, not forced to 0
    ct = make_configuration([1.0, 1.0, 1.0], normalization=[
        {"scheme": "ct", "clip_low": 60.0, "clip_high": 140.0, "mean": 100.0, "std": 20.0}])
    data, _, _ = preprocess_case([tmp_path / "case_0000.nii.gz"], None, configuration=as_configuration(ct))
    assert data.min() == pytest.approx((60 - 100) / 20) and data.max() == pytest.approx((140 - 100) / 20)


def test_storage_is_memory_mappable_and_a_missing_sidecar_means_incomplete(tmp_path):
    data = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)
    segmentation = np.zeros((1, 5, 6, 7), dtype=np.int8)
    properties = {"identifier": "a", "shape_after_resampling": [5, 6, 7], "class_locations": {"1": []}}
    write_preprocessed_case(tmp_path, "a", data, segmentation, properties)
    assert is_case_complete(tmp_path, "a", expect_segmentation=True, channels=2)
    assert not is_case_complete(tmp_path, "a", expect_segmentation=True, channels=1)
    loaded, loaded_segmentation, loaded_properties = load_preprocessed_case(tmp_path, "a")
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, data) and loaded_properties == properties
    assert np.array_equal(loaded_segmentation, segmentation)
    (tmp_path / "a.json").unlink()
    assert not is_case_complete(tmp_path, "a", expect_segmentation=True, channels=2)


def test_a_large_case_is_stored_compressed_losslessly_and_one_format_replaces_the_other(tmp_path, monkeypatch):
    data = np.random.default_rng(0).normal(size=(2, 9, 20, 21)).astype(np.float32)
    segmentation = (data[:1] > 1).astype(np.int8)
    properties = {"identifier": "a", "shape_after_resampling": [9, 20, 21], "class_locations": {"1": []}}
    monkeypatch.setattr(case_arrays, "COMPRESS_FROM_BYTES", data.nbytes)  # this case is "large"
    write_preprocessed_case(tmp_path, "a", data, segmentation, properties, patch_size=[4, 8, 8])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.b2nd", "a.json", "a_seg.b2nd"]
    assert is_case_complete(tmp_path, "a", expect_segmentation=True, channels=2)
    assert not is_case_complete(tmp_path, "a", expect_segmentation=True, channels=1)
    opened, opened_segmentation, loaded_properties = load_preprocessed_case(tmp_path, "a")
    assert opened.chunks == (1, 4, 8, 8) and loaded_properties == properties
    window = (slice(None), slice(2, 7), slice(5, 19), slice(0, 9))
    assert np.array_equal(opened[window], data[window]) and np.array_equal(opened_segmentation[window],
                                                                           segmentation[window])
    in_memory, in_memory_segmentation, _ = load_preprocessed_case(tmp_path, "a", memory_map=False)
    assert np.array_equal(in_memory, data) and np.array_equal(in_memory_segmentation, segmentation)
    (tmp_path / "a_seg.b2nd").write_bytes(b"not blosc2")  # a damaged array makes the case incomplete
    assert not is_case_complete(tmp_path, "a", expect_segmentation=True, channels=2)
    monkeypatch.setattr(case_arrays, "COMPRESS_FROM_BYTES", data.nbytes + 1)  # now it is small: plain .npy again
    write_preprocessed_case(tmp_path, "a", data, segmentation, properties, patch_size=[4, 8, 8])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json", "a.npy", "a_seg.npy"]
    assert isinstance(load_preprocessed_case(tmp_path, "a")[0], np.memmap)


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoseg", "preprocess", *arguments], capture_output=True,
                          text=True, cwd=REPOSITORY, timeout=600)


def write_plans(work_dir: Path, dataset_root: Path, plans: dict) -> None:
    folder = work_dir / dataset_root.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")


def test_cli_reports_missing_plans_and_bad_labels_naming_the_case(tmp_path):
    root = tmp_path / "Dataset900_Bad"
    for identifier, label_value in (("good", 1.0), ("broken", 0.5)):
        image = np.ones((4, 8, 8), dtype=np.float32)
        label = np.zeros((4, 8, 8), dtype=np.float32)
        label[1:3, 2:6, 2:6] = label_value
        write_nifti(image, root / "imagesTr" / f"{identifier}_0000.nii.gz")
        write_nifti(label, root / "labelsTr" / f"{identifier}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "thing": 1}, "numTraining": 2,
        "file_ending": ".nii.gz"}), encoding="utf-8")
    work = tmp_path / "work"
    missing = run_cli(str(root), "--work-dir", str(work))
    assert missing.returncode == 2 and "plans" in missing.stderr and "Traceback" not in missing.stderr
    write_plans(work, root, make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0])}))
    result = run_cli(str(root), "--work-dir", str(work), "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert "broken" in result.stderr and "non-integer" in result.stderr and "Traceback" not in result.stderr
    # The good case is stored anyway, so the rerun after fixing the label only does the broken one.
    assert (work / root.name / "preprocessed" / "3d_fullres" / "good.json").is_file()


def test_cascade_shares_fullres_data_and_a_changed_plan_redoes_the_cases(hippocampus_root, copy_cases, tmp_path):
    root = copy_cases(hippocampus_root, 3)
    dataset = load_raw_dataset(root)
    fullres = make_configuration([1.0, 1.0, 1.0])
    plans = make_plans({
        "3d_fullres": fullres,
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    })
    work = tmp_path / "work" / root.name
    summary = preprocess_dataset(dataset, plans=Plans.from_json(plans), work_folder=WorkFolder(work), workers=1,
                                 show_progress=False)
    assert summary["configurations"] == {"3d_fullres": {"preprocessed": 3, "skipped": 0}}
    assert sorted(p.name for p in (work / "preprocessed").iterdir()) == ["3d_fullres"]
    assert len(list((work / "ground_truth").glob("*.nii.gz"))) == 3
    again = preprocess_dataset(dataset, plans=Plans.from_json(plans), work_folder=WorkFolder(work),
                               configuration_names=["3d_cascade_fullres"], workers=1, show_progress=False)
    assert again["configurations"] == {"3d_fullres": {"preprocessed": 0, "skipped": 3}}
    plans["configurations"]["3d_fullres"]["spacing"] = [1.2, 1.2, 1.2]
    changed = preprocess_dataset(dataset, plans=Plans.from_json(plans), work_folder=WorkFolder(work), workers=1,
                                 show_progress=False)
    assert changed["configurations"] == {"3d_fullres": {"preprocessed": 3, "skipped": 0}}
    assert read_image(next((work / "ground_truth").glob("*.nii.gz"))).geometry.spacing == (1.0, 1.0, 1.0)
    forced = preprocess_dataset(dataset, plans=Plans.from_json(plans), work_folder=WorkFolder(work), workers=1,
                                overwrite=True,
                                show_progress=False)
    assert forced["configurations"] == {"3d_fullres": {"preprocessed": 3, "skipped": 0}}


@pytest.mark.parametrize("compress", [False, True])
def test_two_parts_into_one_working_folder_equal_one_process_file_by_file(
    hippocampus_root, copy_cases, tmp_path, tree_hashes, monkeypatch, compress
):
    if compress:
        monkeypatch.setattr(case_arrays, "COMPRESS_FROM_BYTES", 1)  # compressed files must be deterministic too
    root = copy_cases(hippocampus_root, 5)
    dataset = load_raw_dataset(root)
    plans = Plans.from_json(make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0])}))
    whole, split = WorkFolder(tmp_path / "whole" / root.name), WorkFolder(tmp_path / "split" / root.name)
    summary = preprocess_dataset(dataset, plans=plans, work_folder=whole, workers=1, show_progress=False)
    assert summary == {"configurations": {"3d_fullres": {"preprocessed": 5, "skipped": 0}}, "ground_truth_copied": 5}
    identifiers = sorted(case.identifier for case in dataset.training_cases)
    first = preprocess_dataset(dataset, plans=plans, work_folder=split, workers=2, show_progress=False,
                               part_id=0, num_parts=2)
    assert first == {"configurations": {"3d_fullres": {"preprocessed": 3, "skipped": 0}}, "ground_truth_copied": 3}
    # Each part writes only its own cases (every 2nd of the sorted list), ground truth included.
    assert sorted(path.stem for path in split.ground_truth.glob("*.nii.gz")) == [
        f"{identifier}.nii" for identifier in identifiers[0::2]]
    assert preprocessed_case_ids(split.preprocessed("3d_fullres")) == identifiers[0::2]
    second = preprocess_dataset(dataset, plans=plans, work_folder=split, workers=1, show_progress=False,
                                part_id=1, num_parts=2)
    assert second["configurations"] == {"3d_fullres": {"preprocessed": 2, "skipped": 0}}
    assert tree_hashes(split.root) == tree_hashes(whole.root)
    assert len(list(split.preprocessed("3d_fullres").glob("*.b2nd" if compress else "*.npy"))) == 10
    with pytest.raises(UserError, match=r"--part-id must be in 0\.\.1"):
        preprocess_dataset(dataset, plans=plans, work_folder=split, part_id=2, num_parts=2)


def test_each_configuration_counts_its_own_cases_when_one_chunk_holds_a_case_twice(hippocampus_root, copy_cases,
                                                                                 tmp_path):
    root = copy_cases(hippocampus_root, 3)
    plans = Plans.from_json(make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0]),
                                        "2d": make_configuration([1.0, 1.0, 1.0], dimension=2)}))
    dataset = load_raw_dataset(root)
    work = WorkFolder(tmp_path / "work" / root.name)
    work.root.mkdir(parents=True)
    # Known (small) sizes put every task, of both configurations, into one chunk.
    shapes = {case.identifier: {"shape": list(read_image(case.images[0]).geometry.shape)}
              for case in dataset.training_cases}
    work.fingerprint.write_text(json.dumps({"cases": shapes}), encoding="utf-8")
    summary = preprocess_dataset(dataset, plans=plans, work_folder=work, workers=1, show_progress=False)
    assert summary["configurations"] == {"3d_fullres": {"preprocessed": 3, "skipped": 0},
                                         "2d": {"preprocessed": 3, "skipped": 0}}


def test_parts_share_the_working_folder_lock_and_keep_each_others_temporaries(tmp_path):
    root = tmp_path / "Dataset901_Parts"
    for identifier in ("a", "b", "c"):
        label = np.zeros((4, 8, 8), dtype=np.float32)
        label[1:3, 2:6, 2:6] = 1
        write_nifti(np.ones((4, 8, 8), dtype=np.float32), root / "imagesTr" / f"{identifier}_0000.nii.gz")
        write_nifti(label, root / "labelsTr" / f"{identifier}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "thing": 1}, "numTraining": 3,
        "file_ending": ".nii.gz"}), encoding="utf-8")
    work = tmp_path / "work"
    write_plans(work, root, make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0])}))
    output = work / root.name / "preprocessed" / "3d_fullres"
    output.mkdir(parents=True)
    other_part = output / ".b.npy.x1.partial.npy"  # being written by part 1, running on another node
    other_part.write_bytes(b"half")
    with folder_lock(work / root.name, shared=True):  # another part holds the lock (shared)
        part = run_cli(str(root), "--work-dir", str(work), "--part-id", "0", "--num-parts", "2")
        assert part.returncode == 0, part.stderr
        assert "2 case(s) preprocessed" in part.stdout
        unsplit = run_cli(str(root), "--work-dir", str(work))  # an unsplit run would redo the other part's cases
        assert unsplit.returncode != 0 and "Traceback" not in unsplit.stderr
    assert other_part.is_file() and preprocessed_case_ids(output) == ["a", "c"]
    bad = run_cli(str(root), "--work-dir", str(work), "--part-id", "2", "--num-parts", "2")
    assert bad.returncode == 2 and "--part-id must be in 0..1" in bad.stderr


def test_small_cases_travel_in_bounded_chunks_and_large_ones_alone():
    def task(identifier):
        return CaseTask(identifier, (), None, "", None, (), "")

    sizes = {"a": 100_000, "b": 100_000, "huge": 50 * CHUNK_VOXEL_BUDGET, "c": CHUNK_VOXEL_BUDGET // 2,
             "d": CHUNK_VOXEL_BUDGET // 2 + 1}
    tasks = [task(identifier) for identifier in [*sizes, "unknown", *(f"s{i}" for i in range(20))]]
    sizes.update({f"s{i}": 10 for i in range(20)})
    chunks = [[t.identifier for t in chunk] for chunk in chunk_tasks(tasks, sizes)]
    assert chunks[:5] == [["a", "b"], ["huge"], ["c"], ["d"], ["unknown"]]  # unknown size: treated as large
    assert [len(chunk) for chunk in chunks[5:]] == [16, 4]
    assert [identifier for chunk in chunks for identifier in chunk] == [t.identifier for t in tasks]


def count_sidecars(folder: Path) -> int:
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def kill_and_resume_equals_clean_run(root: Path, tmp_path: Path, tree_hashes, *, kill_after: int) -> None:
    """Clean run; a second run killed with SIGKILL after ``kill_after`` cases, damaged further, then resumed;
    every output file must equal the clean run's, byte for byte."""
    dataset = load_raw_dataset(root)
    plans = make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0])})
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for work in (clean, killed):
        write_plans(work, root, plans)
    # The clean run knows the case sizes (fingerprint.json), so it sends small cases to workers in chunks; the
    # killed run does not (one case per task): the bytes must not depend on that either.
    shapes = {case.identifier: {"shape": list(read_image(case.images[0]).geometry.shape)}
              for case in dataset.training_cases}
    (clean / root.name / "fingerprint.json").write_text(json.dumps({"cases": shapes}), encoding="utf-8")
    assert run_cli(str(root), "--work-dir", str(clean), "--workers", "2").returncode == 0

    output = killed / root.name / "preprocessed" / "3d_fullres"
    process = subprocess.Popen([sys.executable, "-m", "autoseg", "preprocess", str(root), "--work-dir", str(killed),
                                "--workers", "1"], cwd=REPOSITORY, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while count_sidecars(output) < kill_after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: no worker survives to finish the job
    process.wait()
    done_at_kill = count_sidecars(output)
    assert process.returncode == -signal.SIGKILL and done_at_kill < len(dataset.training_cases), (
        f"the run finished before it could be killed ({done_at_kill} cases)"
    )
    # Make the damage certain, whatever instant the kill hit: a case with arrays but no sidecar, a truncated
    # array, and a stale temporary file.
    finished = sorted(output.glob("*.json"))
    finished[0].unlink()
    truncated = finished[1].with_suffix(".npy")
    truncated.write_bytes(truncated.read_bytes()[:100])
    finished[1].unlink()
    (output / ".stale.npy.abc.partial.npy").write_bytes(b"half")

    resumed = run_cli(str(root), "--work-dir", str(killed), "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(dataset.training_cases) - done_at_kill + 2} case(s) preprocessed" in resumed.stdout
    for folder in ("preprocessed", "ground_truth"):
        assert tree_hashes(killed / root.name / folder) == tree_hashes(clean / root.name / folder)
    assert not list(output.glob(".*partial*"))


def test_kill_minus_nine_then_resume_equals_a_clean_run(hippocampus_root, copy_cases, tmp_path, tree_hashes):
    root = copy_cases(hippocampus_root, 40)
    kill_and_resume_equals_clean_run(root, tmp_path, tree_hashes, kill_after=8)


@pytest.mark.slow
def test_kill_minus_nine_then_resume_on_the_full_hippocampus_dataset(hippocampus_root, tmp_path, tree_hashes):
    kill_and_resume_equals_clean_run(hippocampus_root, tmp_path, tree_hashes, kill_after=60)
