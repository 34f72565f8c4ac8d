"""The memory a large case needs is said before work on it starts."""

from __future__ import annotations

from autoseg.utils.memory import describe_largest_case, estimate_case_memory


def test_the_largest_case_is_named_with_its_memory_and_small_data_says_nothing() -> None:
    shapes = {"small": (100, 256, 256), "ct_042": (600, 512, 512), "medium": (300, 512, 512)}
    sentence = describe_largest_case(shapes, channels=1, classes=3, workers=2)
    assert sentence.startswith("memory: the largest case, ct_042 (600x512x512, 157 M voxels)")
    assert "2.1 GB per preprocessing worker (2 at once: 4.3 GB)" in sentence
    assert describe_largest_case({"hippocampus_001": (36, 50, 35)}, channels=1, classes=3, workers=2) is None


def test_more_classes_and_channels_need_more_memory_to_predict() -> None:
    base = estimate_case_memory((200, 512, 512), channels=1, classes=2)
    assert estimate_case_memory((200, 512, 512), channels=2, classes=2).predict_gb > base.predict_gb
    assert estimate_case_memory((200, 512, 512), channels=1, classes=14).predict_gb > 2 * base.predict_gb - 0.4
