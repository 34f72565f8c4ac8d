"""Test-time appearance adaptation: re-render or re-normalise one foreign image at a time, segmenter frozen.

A model trained on one scanner's images loses accuracy on another scanner's, although the anatomy is the same.
Three methods adapt each test image on its own, starting from the trained state for every case; each first
standardises the image's intensity landmarks into the range of the training images (``standardise``):

- ``standardise`` (the default): that closed-form intensity standardisation alone (Nyul & Udupa 1999).
- ``normaliser``: a small identity-initialised input-normalisation network in front of the
  frozen segmenter, optimised for a few steps so that its segmentation agrees with a shape prior learned from the
  training labels (a denoising autoencoder, Karani et al. 2021) and with its own mirrored views.
- ``adversarial`` (Yang et al. 2018): a shallow U-Net renderer re-renders the image in the training corpus'
  appearance under an L1 content term, against an appearance, a structure and an (image, segmentation) pair
  discriminator trained by self-play on the training corpus.

A case whose adapted prediction looks implausible next to what the model predicts on its training images (the
foreground fraction leaves the training range, or the uncertainty rises) keeps the unadapted prediction
(``autoseg.inference.adaptation.plausibility``). See docs/adaptation.md.
"""

from __future__ import annotations

from autoseg.inference.adaptation.adapter import (
    ADAPTATION_METHODS,
    CaseAdaptation,
    FoldAdapter,
    load_fold_adapter,
    train_fold_adapter,
)

__all__ = ["ADAPTATION_METHODS", "CaseAdaptation", "FoldAdapter", "load_fold_adapter", "train_fold_adapter"]
