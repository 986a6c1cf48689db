"""Diagonal Gaussian posterior q(z | x) parameterised by the encoder's moments (latent-diffusion)."""

import torch
from torch import Tensor

# latent-diffusion's clamp: keeps exp(logvar) finite early in training
LOGVAR_RANGE = (-30.0, 20.0)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over a (B, nz, h, w) latent.

    Args:
        moments: (B, 2 * nz, h, w), mean and log-variance concatenated on the channel axis.
    """

    def __init__(self, moments: Tensor):
        if moments.dim() != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments: expected (B, 2 * nz, h, w), got shape {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, nz, h, w) each
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample mean + std * eps, (B, nz, h, w)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        """The mean, (B, nz, h, w)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over (nz, h, w): (B,)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))
