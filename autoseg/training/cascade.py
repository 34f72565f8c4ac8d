"""Training the second stage of a cascade (``3d_cascade_fullres``): its extra input is the previous stage's
segmentation, and in training that segmentation must be one the previous stage made *without* having seen the case.

Every case is a validation case of exactly one fold of the previous stage (``3d_lowres``), so once all its folds are
trained, fold ``k``'s model segments fold ``k``'s validation cases, and every case gets an out-of-fold segmentation
with realistic errors. It is made exactly as at inference: the previous stage predicts its own preprocessed data
(``autoseg.inference.next_stage``, mirroring on), the probabilities are resized to this stage's grid and turned
into a label map (``previous_stage_label_map``). The maps are stored as ``uint8``/``uint16`` ``(1, z, y, x)``
arrays next to the previous stage's folds::

    WORK/<dataset>/models/<previous stage>/next_stage/<cascade configuration>/CASE.npy
    WORK/<dataset>/models/<previous stage>/next_stage/<cascade configuration>/fold_K.json  (written last)

``fold_K.json`` records the SHA-256 of the checkpoint that made fold K's maps; a retrained previous stage makes them
again. The patch loader reads the maps beside the image and label patches, augments them like labels and appends
them to the network input as one-hot channels (``PreviousStageToData``), one per foreground label, as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PreviousStageToData:
    """Batch transform: ``seg`` channel 1 (the previous stage's label map, augmented like the labels) becomes
    one-hot data channels, one per foreground label, appended after the image channels; ``seg`` keeps channel 0."""

    def __init__(self, foreground_labels: Sequence[int]) -> None:
        self.foreground_labels = tuple(int(label) for label in foreground_labels)

    def __call__(self, **data_dict):
        seg = data_dict["seg"]
        previous = np.rint(seg[:, 1:2])
        channels = [(previous == label).astype(np.float32) for label in self.foreground_labels]
        data_dict["data"] = np.concatenate([data_dict["data"], *channels], axis=1)
        data_dict["seg"] = seg[:, :1]
        return data_dict
