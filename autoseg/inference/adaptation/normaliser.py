"""The cheap method: an input normaliser adapted per image under a learned shape prior (Karani et al. 2021).

Training (``train_shape_prior``, once per fold): a denoising autoencoder learns what the training labels look like
on a coarse grid, from corrupted versions of them (boxes of a wrong class, eroded or dilated structures, noise).

Adaptation (``adapt_normaliser``, per image): an identity-initialised ``InputNormaliser`` in front of the frozen
segmenter is optimised for a few Adam steps on the loss

    L = |p - stop_gradient(sigma(DAE(p)))|_1  +  consistency * |p - flip(p_flipped)|^2  +  entropy * H(p)

where ``p`` is the segmentation of the normalised image averaged with one mirrored view (a different mirror axis
each step), all at the autoencoder's grid for the first term. The state with the lowest loss seen is kept.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from autoseg.inference.adaptation.segmenter import FrozenSegmenter, ImageWindows, mean_entropy
from autoseg.inference.adaptation.small_networks import InputNormaliser, ShapeAutoencoder


@dataclasses.dataclass(frozen=True)
class NormaliserSettings:
    steps: int = 10
    learning_rate: float = 1e-2
    consistency_weight: float = 1.0
    entropy_weight: float = 0.1
    windows_per_step: int = 2


def _corrupt(coarse: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Corrupted coarse label maps ``(B, K, *grid)``: a wrong-class box, erosion or dilation, and noise."""
    corrupted = coarse.clone()
    spatial = corrupted.shape[2:]
    channels = corrupted.shape[1]
    for item in corrupted:
        sizes = [max(1, int(size * (0.1 + 0.3 * torch.rand(1, generator=generator).item()))) for size in spatial]
        starts = [int(torch.randint(0, size - box + 1, (1,), generator=generator))
                  for size, box in zip(spatial, sizes, strict=True)]
        box = tuple(slice(start, start + length) for start, length in zip(starts, sizes, strict=True))
        wrong = int(torch.randint(0, channels, (1,), generator=generator))
        item[(slice(None), *box)] = 0.0
        item[(wrong, *box)] = 1.0
        if torch.rand(1, generator=generator).item() < 0.5:
            pool = torch.nn.functional.max_pool2d if item.ndim == 3 else torch.nn.functional.max_pool3d
            channel = int(torch.randint(0, channels, (1,), generator=generator))
            item[channel] = pool(item[channel][None], 3, stride=1, padding=1)[0]
    noise = 0.15 * torch.randn(corrupted.shape, generator=generator)
    return torch.softmax(torch.log(corrupted.clamp_min(1e-3)) + noise * 4, dim=1)


def train_shape_prior(
    targets: torch.Tensor, *, patch_size: tuple[int, ...], steps: int, generator: torch.Generator,
    batch_size: int = 8, uses_regions: bool = False,
) -> tuple[ShapeAutoencoder, list[float]]:
    """A denoising autoencoder trained on the training label windows ``targets`` ``(N, K, *patch)``."""
    prior = ShapeAutoencoder(targets.shape[1], patch_size=patch_size)
    coarse_targets = prior.coarse(targets)
    optimiser = torch.optim.Adam(prior.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        chosen = torch.randint(0, len(targets), (batch_size,), generator=generator)
        clean = coarse_targets[chosen]
        logits = prior(_corrupt(clean, generator) if not uses_regions else _corrupt_regions(clean, generator))
        if uses_regions:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, clean)
        else:
            loss = torch.nn.functional.cross_entropy(logits, clean)  # soft targets: coarse cells are mixed
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return prior.eval(), losses


def _corrupt_regions(coarse: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Regions are independent masks: flip a box of each to its opposite, and add noise."""
    corrupted = coarse.clone()
    for item in corrupted:
        sizes = [max(1, int(size * 0.25)) for size in item.shape[1:]]
        starts = [int(torch.randint(0, size - box + 1, (1,), generator=generator))
                  for size, box in zip(item.shape[1:], sizes, strict=True)]
        box = tuple(slice(start, start + length) for start, length in zip(starts, sizes, strict=True))
        item[(slice(None), *box)] = 1.0 - item[(slice(None), *box)]
    return (corrupted + 0.15 * torch.randn(corrupted.shape, generator=generator)).clamp(0, 1)


def _mirrored_views(segmenter: FrozenSegmenter, image: torch.Tensor, flip: tuple[int, ...]) -> tuple:
    """The segmentation of ``image`` and of its mirror image, mirrored back."""
    first = segmenter(image)
    dims = [axis + 2 for axis in flip]
    second = torch.flip(segmenter(torch.flip(image, dims)), dims)
    return first, second


def normaliser_loss(
    segmenter: FrozenSegmenter, prior: ShapeAutoencoder, image: torch.Tensor, flip: tuple[int, ...],
    settings: NormaliserSettings,
) -> torch.Tensor:
    """The adaptation loss of one batch of normalised windows (see the module's docstring)."""
    first, second = _mirrored_views(segmenter, image, flip)
    probabilities = (first + second) / 2
    coarse = prior.coarse(probabilities)
    with torch.no_grad():
        logits = prior(coarse)
        plausible = torch.sigmoid(logits) if segmenter.uses_regions else torch.softmax(logits, dim=1)
    shape_term = (coarse - plausible).abs().sum(1).mean()
    consistency = (first - second).pow(2).sum(1).mean()
    entropy = mean_entropy(probabilities, uses_regions=segmenter.uses_regions)
    return shape_term + settings.consistency_weight * consistency + settings.entropy_weight * entropy


def adapt_normaliser(
    segmenter: FrozenSegmenter, prior: ShapeAutoencoder, windows: ImageWindows, *, channels: int,
    settings: NormaliserSettings, generator: torch.Generator,
) -> tuple[InputNormaliser, list[float]]:
    """A fresh normaliser optimised on one image; returns the lowest-loss state and the loss of every step."""
    dimension = 2 if windows.is_2d else 3
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the case's seed, not the global state
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        normaliser = InputNormaliser(channels, dimension=dimension).to(windows.padded.device)
    optimiser = torch.optim.Adam(normaliser.parameters(), lr=settings.learning_rate)
    flips = [(axis,) for axis in range(dimension)]
    best_loss, best_state, losses = float("inf"), copy.deepcopy(normaliser.state_dict()), []
    for step in range(settings.steps):
        batch = windows.batch(windows.sample(settings.windows_per_step, generator))
        loss = normaliser_loss(segmenter, prior, normaliser(batch), flips[step % len(flips)], settings)
        losses.append(float(loss.detach()))
        if losses[-1] < best_loss:
            best_loss, best_state = losses[-1], copy.deepcopy(normaliser.state_dict())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    normaliser.load_state_dict(best_state)
    return normaliser.eval(), losses
