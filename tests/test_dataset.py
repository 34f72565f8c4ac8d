"""The raw dataset contract on the real shared datasets and on small variants built from their files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoseg.data.raw_folder import load_raw_dataset, scan_raw_dataset
from autoseg.errors import DatasetError
from autoseg.records.dataset import RawDataset
from autoseg.utils.files import read_json, write_json


def _write_meta(root: Path, **changes: object) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_real_hippocampus_parses_into_200_cases(hippocampus_root):
    dataset = load_raw_dataset(hippocampus_root)
    assert len(dataset.training_cases) == dataset.num_training == 200
    assert dataset.channel_names == ("MRI",)
    assert dataset.labels == {"background": 0, "anterior": 1, "posterior": 2}
    assert dataset.foreground_labels == (1, 2) and dataset.num_output_channels == 3
    first = dataset.training_cases[0]
    assert first.identifier == "hippocampus_001"
    assert first.images == (str(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz"),)
    assert first.label == str(hippocampus_root / "labelsTr" / "hippocampus_001.nii.gz")
    assert dataset.case("hippocampus_001") == first


def test_real_hc18_parses_into_300_cases(hc18_root):
    dataset = load_raw_dataset(hc18_root)
    assert len(dataset.training_cases) == dataset.num_training == 300
    assert dataset.channel_names == ("US",) and dataset.foreground_labels == (1,)
    assert {"002_HC", "005_HC"} <= {case.identifier for case in dataset.training_cases}


def test_description_round_trips_through_json(hippocampus_root, tmp_path):
    dataset = load_raw_dataset(hippocampus_root)
    write_json(tmp_path / "dataset.json", dataset.to_dict())
    assert RawDataset.from_dict(read_json(tmp_path / "dataset.json")) == dataset


def test_dataset_key_maps_cases_to_files_anywhere(hippocampus_root, tmp_path):
    root = tmp_path / "Dataset100_Mapped"
    root.mkdir()
    (root / "local").mkdir()
    shutil.copyfile(hippocampus_root / "imagesTr" / "hippocampus_004_0000.nii.gz", root / "local" / "scan.nii.gz")
    shutil.copyfile(hippocampus_root / "labelsTr" / "hippocampus_004.nii.gz", root / "local" / "seg.nii.gz")
    meta = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "anterior": 1, "posterior": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
        "dataset": {
            # absolute paths into the read-only shared dataset, and paths relative to the dataset folder
            "first": {"images": [str(hippocampus_root / "imagesTr" / "hippocampus_001_0000.nii.gz")],
                      "label": str(hippocampus_root / "labelsTr" / "hippocampus_001.nii.gz")},
            "second": {"images": ["local/scan.nii.gz"], "label": "local/seg.nii.gz"},
        },
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = load_raw_dataset(root)
    assert [case.identifier for case in dataset.training_cases] == ["first", "second"]
    assert dataset.case("second").images == (str(root / "local" / "scan.nii.gz"),)
    assert dataset.case("first").label == str(hippocampus_root / "labelsTr" / "hippocampus_001.nii.gz")

    meta["dataset"]["second"]["label"] = "local/missing.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"case second, .*missing\.nii\.gz: file listed in dataset.json"):
        load_raw_dataset(root)


def test_regions_need_a_class_order_and_may_nest(hippocampus_root, copy_cases):
    root = copy_cases(hippocampus_root, 2)
    _write_meta(root, labels={"background": 0, "whole": [1, 2], "posterior": [2]})
    with pytest.raises(DatasetError, match="needs 'regions_class_order'"):
        load_raw_dataset(root)
    _write_meta(root, regions_class_order=[1, 2])
    dataset = load_raw_dataset(root)
    assert dataset.has_regions
    assert dataset.regions == ((1, 2), (2,))
    assert dataset.num_output_channels == 2
    assert dataset.regions_class_order == (1, 2)
    assert dataset.declared_label_values == (0, 1, 2)


def test_brats_style_regions_whose_members_cover_the_values_are_accepted(hippocampus_root, copy_cases):
    root = copy_cases(hippocampus_root, 2)
    _write_meta(root, labels={"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing": 3},
                regions_class_order=[1, 2, 3])
    dataset = load_raw_dataset(root)
    assert dataset.declared_label_values == (0, 1, 2, 3)


def test_ignore_label_is_declared_but_not_a_class(hippocampus_root, copy_cases):
    root = copy_cases(hippocampus_root, 2)
    _write_meta(root, labels={"background": 0, "anterior": 1, "posterior": 2, "ignore": 3})
    dataset = load_raw_dataset(root)
    assert dataset.ignore_label == 3
    assert dataset.foreground_labels == (1, 2)
    assert dataset.declared_label_values == (0, 1, 2, 3)
    assert dataset.num_output_channels == 3
    _write_meta(root, labels={"background": 0, "anterior": 1, "posterior": 2, "ignore": 1})
    with pytest.raises(DatasetError, match=r"'ignore' label \(1\) must be larger than every class value"):
        load_raw_dataset(root)


def test_test_images_in_imagests_are_found_without_labels(hippocampus_root, copy_cases):
    root = copy_cases(hippocampus_root, 2)
    (root / "imagesTs").mkdir()
    for identifier in ("hippocampus_006", "hippocampus_007"):
        name = f"{identifier}_0000.nii.gz"
        shutil.copyfile(hippocampus_root / "imagesTr" / name, root / "imagesTs" / name)
    dataset = load_raw_dataset(root)
    assert [case.identifier for case in dataset.test_cases] == ["hippocampus_006", "hippocampus_007"]
    assert all(case.label is None for case in dataset.test_cases)
    assert len(dataset.training_cases) == 2


def test_structural_problems_are_all_reported_naming_files(hippocampus_root, copy_cases):
    root = copy_cases(hippocampus_root, 3)
    (root / "labelsTr" / "hippocampus_001.nii.gz").unlink()
    (root / "imagesTr" / "hippocampus_004_0007.nii.gz").write_bytes(b"")
    _, problems = scan_raw_dataset(root)
    messages = [str(problem) for problem in problems]
    assert any("case hippocampus_001" in m and "label file is missing" in m for m in messages), messages
    assert any("case hippocampus_004" in m and "extra channel 0007" in m for m in messages), messages


def test_msd_style_dataset_json_is_pointed_at_the_converter(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "training": []}))
    with pytest.raises(DatasetError, match="convert-msd"):
        load_raw_dataset(tmp_path)
