"""The seed method: online adversarial appearance conversion (Yang et al., MICCAI 2018).

A renderer (shallow U-Net, identity at initialisation) re-renders an image; the frozen segmenter segments the
rendering. Three least-squares patch discriminators judge what a training image looks like:

- appearance: the image alone (real: a training image; fake: a rendering),
- structure: the segmentation alone (real: a training label map; fake: the segmentation of a rendering),
- pair: image and segmentation together (real: a training image with its labels; fake: a rendering with its
  segmentation).

Self-play (``train_adversarial``, once per fold): each step treats one training window as foreign, after a random
appearance perturbation (gamma, contrast, blur, noise: the kind the segmenter's own augmentation uses), renders it,
and updates the discriminators, then the renderer (fool all three, ``l1_weight`` x L1 to its input to keep the
content). At test time (``adapt_adversarial``) the same two updates run for a few steps on the one test image, from
the trained state, against a small bank of training windows stored with the adapter.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from autoseg.inference.adaptation.segmenter import FrozenSegmenter, ImageWindows
from autoseg.inference.adaptation.small_networks import Discriminator, Renderer

DISCRIMINATORS = ("appearance", "structure", "pair")


@dataclasses.dataclass(frozen=True)
class AdversarialSettings:
    steps: int = 5
    learning_rate: float = 2e-4
    l1_weight: float = 10.0
    bank_size: int = 8


@dataclasses.dataclass
class AdversarialParts:
    """The renderer and the three discriminators (``DISCRIMINATORS`` order)."""

    renderer: Renderer
    discriminators: nn.ModuleDict

    @classmethod
    def new(cls, *, channels: int, classes: int, dimension: int) -> AdversarialParts:
        inputs = {"appearance": channels, "structure": classes, "pair": channels + classes}
        return cls(
            Renderer(channels, dimension=dimension),
            nn.ModuleDict({name: Discriminator(inputs[name], dimension=dimension) for name in DISCRIMINATORS}),
        )

    def state_dict(self) -> dict:
        return {"renderer": self.renderer.state_dict(), "discriminators": self.discriminators.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.renderer.load_state_dict(state["renderer"])
        self.discriminators.load_state_dict(state["discriminators"])

    def optimisers(self, learning_rate: float) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        return (torch.optim.Adam(self.renderer.parameters(), lr=learning_rate, betas=betas),
                torch.optim.Adam(self.discriminators.parameters(), lr=learning_rate, betas=betas))


def perturb_appearance(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random appearance change of z-scored windows ``(B, C, ...)``: gamma, contrast, blur, noise, re-z-scored."""
    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(1, generator=generator).item()

    axes = tuple(range(2, image.ndim))
    low, high = image.amin(axes, keepdim=True), image.amax(axes, keepdim=True)
    unit = (image - low) / (high - low).clamp_min(1e-6)
    unit = unit.pow(float(torch.exp(torch.tensor(uniform(-0.7, 0.7)))))
    if uniform(0, 1) < 0.5:
        pool = nn.functional.avg_pool2d if image.ndim == 4 else nn.functional.avg_pool3d
        unit = pool(unit, 3, stride=1, padding=1, count_include_pad=False)
    unit = unit * uniform(0.7, 1.3) + uniform(0.0, 0.08) * torch.randn(unit.shape, generator=generator).to(unit.device)
    return (unit - unit.mean(axes, keepdim=True)) / unit.std(axes, keepdim=True).clamp_min(1e-6)


def _least_squares(scores: torch.Tensor, target: float) -> torch.Tensor:
    return (scores - target).pow(2).mean()


def _discriminator_step(
    parts: AdversarialParts, optimiser: torch.optim.Optimizer, real: tuple[torch.Tensor, torch.Tensor],
    fake: tuple[torch.Tensor, torch.Tensor],
) -> float:
    """One update of the three discriminators on real ``(image, labels)`` and detached fake pairs."""
    (real_image, real_labels), (fake_image, fake_labels) = real, (fake[0].detach(), fake[1].detach())
    inputs = {
        "appearance": (real_image, fake_image), "structure": (real_labels, fake_labels),
        "pair": (torch.cat((real_image, real_labels), 1), torch.cat((fake_image, fake_labels), 1)),
    }
    loss = sum(
        _least_squares(parts.discriminators[name](inputs[name][0]), 1.0)
        + _least_squares(parts.discriminators[name](inputs[name][1]), 0.0)
        for name in DISCRIMINATORS
    )
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def _renderer_step(
    parts: AdversarialParts, optimiser: torch.optim.Optimizer, foreign: torch.Tensor, segmenter: FrozenSegmenter,
    l1_weight: float,
) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    """Render ``foreign``, update the renderer to fool the discriminators; returns its loss and the fake pair."""
    rendered = parts.renderer(foreign)
    segmentation = segmenter(rendered)
    fooled = (
        _least_squares(parts.discriminators["appearance"](rendered), 1.0)
        + _least_squares(parts.discriminators["structure"](segmentation), 1.0)
        + _least_squares(parts.discriminators["pair"](torch.cat((rendered, segmentation), 1)), 1.0)
    )
    loss = fooled + l1_weight * (rendered - foreign).abs().mean()
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    parts.discriminators.zero_grad()  # the renderer's loss reached the discriminators too; they learn separately
    return float(loss.detach()), (rendered, segmentation)


def _play(
    parts: AdversarialParts, optimisers: tuple, segmenter: FrozenSegmenter, foreign: torch.Tensor,
    real: tuple[torch.Tensor, torch.Tensor], l1_weight: float,
) -> float:
    renderer_loss, fake = _renderer_step(parts, optimisers[0], foreign, segmenter, l1_weight)
    _discriminator_step(parts, optimisers[1], real, fake)
    return renderer_loss


def train_adversarial(
    segmenter: FrozenSegmenter, images: torch.Tensor, targets: torch.Tensor, *, steps: int,
    settings: AdversarialSettings, generator: torch.Generator,
) -> tuple[AdversarialParts, list[float]]:
    """Self-play on training windows ``images`` ``(N, C, *patch)`` with labels ``targets`` ``(N, K, *patch)``."""
    dimension = images.ndim - 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        parts = AdversarialParts.new(channels=images.shape[1], classes=targets.shape[1], dimension=dimension)
    parts.renderer.to(images.device)
    parts.discriminators.to(images.device)
    optimisers = parts.optimisers(settings.learning_rate)
    losses = []
    for _ in range(steps):
        foreign_index, real_index = torch.randint(0, len(images), (2, 1), generator=generator)
        foreign = perturb_appearance(images[foreign_index], generator)
        losses.append(_play(parts, optimisers, segmenter, foreign, (images[real_index], targets[real_index]),
                            settings.l1_weight))
    return parts, losses


def adapt_adversarial(
    segmenter: FrozenSegmenter, trained: AdversarialParts, bank: tuple[torch.Tensor, torch.Tensor],
    windows: ImageWindows, *, settings: AdversarialSettings, generator: torch.Generator,
) -> tuple[Renderer, list[float]]:
    """A copy of the trained parts played for ``settings.steps`` steps on one image; returns its renderer."""
    parts = copy.deepcopy(trained)  # never the loaded state itself: no case may see another's adaptation
    parts.renderer.train()
    optimisers = parts.optimisers(settings.learning_rate)
    bank_images, bank_targets = bank
    losses = []
    for _ in range(settings.steps):
        foreign = windows.batch(windows.sample(1, generator))
        real_index = torch.randint(0, len(bank_images), (1,), generator=generator)
        losses.append(_play(parts, optimisers, segmenter, foreign, (bank_images[real_index], bank_targets[real_index]),
                            settings.l1_weight))
    return parts.renderer.eval(), losses
