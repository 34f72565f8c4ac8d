"""He (Kaiming) initialisation for networks with leaky-ReLU activations."""

from __future__ import annotations

from torch import nn

from autoseg.networks.layers import LEAKY_RELU_SLOPE

_CONVOLUTIONS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def he_initialise(module: nn.Module) -> None:
    """Weights ~ N(0, 2 / ((1 + a^2) fan_in)) with ``a`` the leaky-ReLU slope, biases 0.

    This keeps the activation variance constant through depth for (leaky) ReLU networks (He et al. 2015), so deep
    encoders start training without vanishing or exploding signals. Apply with ``model.apply(he_initialise)``.
    """
    if isinstance(module, _CONVOLUTIONS):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_RELU_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
