"""The KL autoencoder: an encoder (LiteVAE, SD-VAE or VAE-Small), a diagonal Gaussian posterior and
the SD-VAE decoder (App. G `LiteVAE`)."""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.gaussian import LOGVAR_RANGE, DiagonalGaussian
from models.litevae_encoder import WAVELET_LEVELS, EncoderConfig, LiteVAEEncoder
from models.sd_vae import SD_VAE_ENCODER, VAE_SMALL_ENCODER, Decoder, DecoderConfig, SDVAEEncoder
from models.wavelets import haar_dwt, haar_idwt

DOWNSAMPLING = 2**WAVELET_LEVELS  # every encoder kind maps H x W to H/8 x W/8


@dataclass(frozen=True)
class AutoencoderConfig:
    """latent_channels: nz. use_1x1_conv: 1x1 convs on the moments and on the latent before decoding
    (Ramesh et al.; App. D.2 finds them harmful, hence off).

    lowpass_shortcut: a non-parametric shortcut around both networks, after the residual autoencoding of
    DC-AE (Chen et al., ICLR 2025): the encoder's first 3 latent means get the image's 8x8 block means added,
    and the decoder's output gets the bilinear upsampling of the first 3 latent channels added, with the
    decoder's output conv initialised to zero (GroupNorm decoders). The untrained autoencoder then already
    returns a blurred image and both networks learn the residual detail. Not in the paper: a convergence aid
    for runs of a few hundred steps (the CPU quickstart); the paper profile turns it off.

    posterior_logvar_init: a constant added to the encoder's log-variances, so the untrained posterior has
    variance ~exp(this) rather than ~1. At variance 1 the noise drowns the young encoder's small means, the
    decoder learns to ignore those channels and the KL keeps them at the prior (posterior collapse; with the
    shortcut, every channel but its 3 collapses). -8 (std 0.02) keeps the sample close to the mean while the
    channels open up; 0 is the paper's parameterisation.
    """

    latent_channels: int = field(default=12, metadata={"ge": 1})
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    use_1x1_conv: bool = False
    lowpass_shortcut: bool = False
    posterior_logvar_init: float = field(default=0.0, metadata={"ge": LOGVAR_RANGE[0], "le": LOGVAR_RANGE[1]})

    def __post_init__(self):
        if self.lowpass_shortcut and self.latent_channels < 3:
            raise ValueError(f"lowpass_shortcut: needs latent_channels >= 3 (one per RGB channel), got "
                             f"{self.latent_channels}")
        if self.decoder.upsampling != DOWNSAMPLING:
            raise ValueError(
                f"decoder.ch_mult: {self.decoder.ch_mult} upsamples by {self.decoder.upsampling}, but the "
                f"encoder downsamples by {DOWNSAMPLING}; give ch_mult 4 entries"
            )


class AutoencoderOutput(NamedTuple):
    image: Tensor  # (B, 3, H, W) reconstruction
    latent: Tensor  # (B, nz, H/8, W/8) sampled or mode latent
    kl: Tensor  # () KL to N(0, I), summed per sample, mean over the batch
    posterior: DiagonalGaussian

    @property
    def wavelet(self) -> Tensor:
        """(B, 12, H/2, W/2) level-1 Haar coefficients of the reconstruction, / 2; computed on access, since
        no training loss reads them."""
        return haar_dwt(self.image, 1) / 2


def build_encoder(cfg: EncoderConfig, latent_channels: int) -> nn.Module:
    """The encoder `cfg.kind` names: (B, 3, H, W) -> (B, 2 * latent_channels, H/8, W/8) moments."""
    if cfg.kind == "litevae":
        return LiteVAEEncoder(cfg, latent_channels)
    spec = SD_VAE_ENCODER if cfg.kind == "sd_vae" else VAE_SMALL_ENCODER
    return SDVAEEncoder(spec, latent_channels)


class Autoencoder(nn.Module):
    """Encoder -> DiagonalGaussian -> decoder. Images are in [-1, 1] with H and W divisible by 8."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        nz = cfg.latent_channels
        self.output_type = cfg.decoder.output_type
        self.encoder = build_encoder(cfg.encoder, nz)
        self.decoder = Decoder(cfg.decoder, nz)
        self.pre_conv = nn.Conv2d(2 * nz, 2 * nz, 1) if cfg.use_1x1_conv else nn.Identity()
        self.post_conv = nn.Conv2d(nz, nz, 1) if cfg.use_1x1_conv else nn.Identity()
        self.lowpass_shortcut = cfg.lowpass_shortcut
        self.posterior_logvar_init = cfg.posterior_logvar_init
        if cfg.lowpass_shortcut and cfg.decoder.norm == "group":
            # the decoder starts as the shortcut alone (an SMC conv's demodulation cannot start from zero)
            nn.init.zeros_(self.decoder.out[-1].weight)
            nn.init.zeros_(self.decoder.out[-1].bias)

    @property
    def decoder_last_layer(self) -> nn.Parameter:
        """Weight of the decoder's final conv (for the adaptive GAN weight of Esser et al.)."""
        return self.decoder.last_layer_weight

    def encode(self, image: Tensor) -> DiagonalGaussian:
        """(B, 3, H, W) -> posterior over a (B, nz, H/8, W/8) latent."""
        moments = self.pre_conv(self.encoder(image))  # (B, 2 nz, H/8, W/8): means, then log-variances
        if self.lowpass_shortcut:
            block_means = F.avg_pool2d(image, DOWNSAMPLING)  # (B, 3, H/8, W/8)
            moments = torch.cat([moments[:, :3] + block_means, moments[:, 3:]], dim=1)
        if self.posterior_logvar_init:
            mean, logvar = moments.chunk(2, dim=1)
            moments = torch.cat([mean, logvar + self.posterior_logvar_init], dim=1)
        return DiagonalGaussian(moments)

    def decode(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """(B, nz, h, w) -> (image (B, 3, 8h, 8w), wavelet (B, 12, 4h, 4w)).

        The wavelet is the level-1 Haar transform of the image divided by 2 (so its LL band is in the
        image's range), whichever of the two the decoder predicts.
        """
        prediction = self._predict(latent)
        if self.output_type == "image":
            return prediction, haar_dwt(prediction, 1) / 2
        return self._image(prediction), prediction

    def _predict(self, latent: Tensor) -> Tensor:
        """(B, nz, h, w) -> what the decoder predicts: image (B, 3, 8h, 8w) or wavelet (B, 12, 4h, 4w)."""
        out = self.decoder(self.post_conv(latent))
        if self.lowpass_shortcut:
            # the image itself, or the LL band of its wavelet (2x2 block means: the first 3 channels)
            scale = DOWNSAMPLING if self.output_type == "image" else DOWNSAMPLING // 2
            blurred = F.interpolate(latent[:, :3], scale_factor=scale, mode="bilinear", align_corners=False)
            out = torch.cat([out[:, :3] + blurred, out[:, 3:]], dim=1)
        return out

    def _image(self, prediction: Tensor) -> Tensor:
        """The decoder's prediction (`_predict`) as an image, (B, 3, 8h, 8w)."""
        return prediction if self.output_type == "image" else haar_idwt(prediction) * 2

    def forward(
        self, image: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> AutoencoderOutput:
        """(B, 3, H, W) -> AutoencoderOutput; `sample=False` decodes the posterior mean, and
        `generator` drives the posterior sample."""
        posterior = self.encode(image)
        latent = posterior.sample(generator) if sample else posterior.mode()
        reconstruction = self._image(self._predict(latent))
        return AutoencoderOutput(reconstruction, latent, posterior.kl().mean(), posterior)
