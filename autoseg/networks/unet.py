"""The U-Net skeleton shared by every architecture: encoder stages, transposed-convolution decoder, output heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg.networks.convolution_stage import plain_convolution_stage
from autoseg.networks.layers import convolution_class, transposed_convolution_class


class UNet(nn.Module):
    """Encoder stages (given) + a decoder that mirrors them + one 1x1 segmentation head per decoder stage.

    Stage ``s`` of the encoder works at resolution ``patch / prod(strides[:s + 1])``. Decoder stage ``s``
    (``s = n - 2 .. 0``) upsamples the deeper features with a transposed convolution whose kernel equals the
    stride ``strides[s + 1]``, concatenates encoder stage ``s``'s output (the skip connection) and applies
    ``convolutions_per_decoder_stage[s]`` convolution units at that resolution.

    Output, in training mode with ``deep_supervision`` on: a list of ``n - 1`` logit tensors, one per decoder
    stage, full resolution first (``[B, classes, *patch]``, then ``patch / strides[1]``, ...). Otherwise (eval
    mode, or ``deep_supervision`` off): the full-resolution logits only, and the coarse heads are not computed.

    Args:
        encoder_stages: one module per stage; stage ``s`` maps ``features[s - 1]`` (or the input) channels to
            ``features_per_stage[s]`` and applies ``strides[s]``.
        features_per_stage, kernel_sizes, strides: the plan's lists (array-axis order, one entry per stage).
        convolutions_per_decoder_stage: ``len(stages) - 1`` counts; entry ``s`` is the decoder stage at resolution
            ``s``.
        out_channels: classes (softmax) or regions (sigmoid).
        architecture: name recorded for ``describe``.
    """

    def __init__(
        self,
        encoder_stages: Sequence[nn.Module],
        *,
        dimension: int,
        features_per_stage: Sequence[int],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        convolutions_per_decoder_stage: Sequence[int],
        out_channels: int,
        deep_supervision: bool = True,
        architecture: str = "unet",
    ) -> None:
        super().__init__()
        number_of_stages = len(encoder_stages)
        if number_of_stages < 2:
            raise ValueError("a U-Net needs at least two stages")
        if len(convolutions_per_decoder_stage) != number_of_stages - 1:
            raise ValueError(
                f"convs_per_stage_decoder needs {number_of_stages - 1} entries, "
                f"got {len(convolutions_per_decoder_stage)}"
            )
        self.dimension = dimension
        self.architecture = architecture
        self.features_per_stage = [int(value) for value in features_per_stage]
        self.kernel_sizes = [[int(value) for value in kernel] for kernel in kernel_sizes]
        self.strides = [[int(value) for value in stride] for stride in strides]
        self.out_channels = int(out_channels)
        self.deep_supervision = bool(deep_supervision)
        self.encoder_stages = nn.ModuleList(encoder_stages)

        transposed = transposed_convolution_class(dimension)
        convolution = convolution_class(dimension)
        self.upsamplers = nn.ModuleList()
        self.decoder_stages = nn.ModuleList()
        self.segmentation_heads = nn.ModuleList()
        # Index s of these lists is the decoder stage at encoder resolution s (0 = full resolution).
        for stage in range(number_of_stages - 1):
            deeper_features = self.features_per_stage[stage + 1]
            features = self.features_per_stage[stage]
            stride = tuple(self.strides[stage + 1])
            self.upsamplers.append(transposed(deeper_features, features, kernel_size=stride, stride=stride, bias=False))
            self.decoder_stages.append(
                plain_convolution_stage(
                    2 * features,
                    features,
                    dimension=dimension,
                    kernel_size=self.kernel_sizes[stage],
                    stride=[1] * dimension,
                    number_of_convolutions=int(convolutions_per_decoder_stage[stage]),
                )
            )
            self.segmentation_heads.append(convolution(features, self.out_channels, kernel_size=1, bias=True))

    def set_deep_supervision(self, enabled: bool) -> None:
        """Switch the list-of-scales output on (training) or off (inference wants one tensor)."""
        self.deep_supervision = bool(enabled)

    @property
    def number_of_outputs(self) -> int:
        """How many logit tensors the forward returns in training mode with deep supervision."""
        return len(self.decoder_stages)

    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        features = image
        for stage in self.encoder_stages:
            features = stage(features)
            skips.append(features)
        all_scales = self.deep_supervision and self.training
        outputs: list[torch.Tensor] = []
        features = skips[-1]
        for stage in range(len(self.decoder_stages) - 1, -1, -1):
            features = self.upsamplers[stage](features)
            features = self.decoder_stages[stage](torch.cat((features, skips[stage]), dim=1))
            if all_scales or stage == 0:
                outputs.append(self.segmentation_heads[stage](features))
        if not all_scales:
            return outputs[-1]
        outputs.reverse()
        return outputs
