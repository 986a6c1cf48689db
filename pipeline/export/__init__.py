"""Trained models as products: export folders (safetensors weights, config.json, latent statistics, a model card),
loaded in one line, run on images of any size, registered in MLflow and driven from the `litevae` command.

    from pipeline.export import load_autoencoder, load_ldm
"""

from pipeline.export.autoencoder import LatentDistribution, LiteVAE, load_autoencoder
from pipeline.export.ldm import LatentDiffusionModel, load_ldm

__all__ = ["LatentDiffusionModel", "LatentDistribution", "LiteVAE", "load_autoencoder", "load_ldm"]
