"""FID and KID on torch-fidelity's standard Inception-v3 features, gathered batch by batch.

torch-fidelity's `calculate_metrics` wants whole datasets; evaluating reconstructions that way would hold every
image (or compute every reconstruction twice). Instead the features of each batch are extracted as soon as the
batch exists and only the (N, 2048) features are kept. KID is torch-fidelity's own function on them. FID is the
same Frechet distance torch-fidelity computes, but its trace term tr sqrt(S1 S2) is taken exactly as the sum of
singular values of F1 F2^T, where S_i = F_i^T F_i (F_i: the centred features / sqrt(N_i - 1), or their QR
factor R when N_i > 2048) -- instead of the eigenvalues of the non-symmetric 2048 x 2048 product S1 S2, which
take 10-45 s per call on 2 CPU cores and one call per resolution. tests/test_weights.py checks both against
torch-fidelity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureBank:
    """Inception pool3 features of image batches, accumulated on the CPU."""

    def __init__(self, extractor: nn.Module, device: torch.device):
        self.extractor, self.device = extractor, device
        self.parts: list[Tensor] = []

    @torch.inference_mode()
    def add(self, images: Tensor) -> None:
        """uint8 (B, 3, H, W) images, any size (resized to 299 inside the extractor)."""
        (features,) = self.extractor(images.to(self.device))  # (B, 2048)
        self.parts.append(features.float().cpu())

    def features(self) -> Tensor:
        """(N, 2048) float32."""
        return torch.cat(self.parts)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2) between feature sets (N, D) and (M, D), N, M >= 2,
    with unbiased covariances S (as torch-fidelity)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()

    def factor(features: Tensor) -> Tensor:
        """F (min(N, D), D) with F^T F = the covariance of `features`."""
        centred = (features - features.mean(dim=0)) / (len(features) - 1) ** 0.5  # (N, D)
        return torch.linalg.qr(centred, mode="r").R if len(features) > features.shape[1] else centred

    f_real, f_fake = factor(real), factor(fake)
    trace_sqrt = torch.linalg.svdvals(f_real @ f_fake.T).sum()
    mean_term = (real.mean(dim=0) - fake.mean(dim=0)).square().sum()
    return float(mean_term + f_real.square().sum() + f_fake.square().sum() - 2 * trace_sqrt)


def kernel_inception_distance(real: Tensor, fake: Tensor, subset_size: int, subsets: int,
                              seed: int) -> tuple[float, float, int]:
    """KID (torch-fidelity: cubic polynomial kernel, unbiased MMD^2 over random subsets) of two feature sets
    (N, D), (M, D). The subset size is clamped to min(N, M), as torch-fidelity requires.

    Returns (mean, std over subsets, the subset size used).
    """
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    out = kid_features_to_metric(real, fake, kid_subset_size=size, kid_subsets=subsets,
                                 rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], size
