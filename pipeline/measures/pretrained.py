"""Pretrained weights for LPIPS (torchvision AlexNet/VGG/SqueezeNet backbones) and for FID/KID (torch-fidelity's
Inception-v3): found in the torch hub cache, at a path from params, or downloaded on first use.

Where a file cannot be had (no network, a corrupt file), loading raises `WeightsUnavailable` with a reason that
says which file is missing and where to put it; callers then report the metric as unavailable, or (for the
perceptual training loss, `perceptual_network("auto")`) train without it and warn. No metric is ever replaced
by a number from another network. Downloads run under a socket timeout, so an unreachable host fails within
`DOWNLOAD_TIMEOUT_S` instead of hanging.

The hub cache is `$TORCH_HOME/hub/checkpoints/` (default `~/.cache/torch/hub/checkpoints/`).
"""

from __future__ import annotations

import logging
import pickle
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

if TYPE_CHECKING:
    import lpips
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30.0
INCEPTION_FEATURES = "2048"  # the pool3 features of FID and KID
# torchvision's ImageNet weights behind each LPIPS backbone.
LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
# What fails when a weights file is absent and cannot be downloaded (URLError, timeouts are OSErrors) or is not
# a loadable state dict of the right layout.
_LOAD_ERRORS = (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that could not be loaded; the message says which file and where to put it."""


def hub_checkpoints() -> Path:
    """The folder torch.hub, torchvision and torch-fidelity look in: `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


@contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket operation (urllib, as used by torch.hub, sets no timeout of its own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _cached_name(url: str) -> str:
    return Path(urlparse(url).path).name


def load_lpips(net: str = "alex") -> lpips.LPIPS:
    """LPIPS v0.1 with backbone `net` ("alex", "vgg" or "squeeze"), in eval mode with frozen parameters.

    Inputs of the returned network: two (B, 3, H, W) images in [-1, 1]; output (B, 1, 1, 1) distances.
    Raises WeightsUnavailable when the backbone's ImageNet weights are neither cached nor downloadable.
    """
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"net: got {net!r}; allowed: {sorted(LPIPS_BACKBONES)}")
    import lpips
    import torchvision.models

    url = getattr(torchvision.models, LPIPS_BACKBONES[net]).IMAGENET1K_V1.url
    expected = hub_checkpoints() / _cached_name(url)
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S), warnings.catch_warnings():
            # lpips still calls torchvision's deprecated `pretrained=True`; the warning is not the user's to fix.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = lpips.LPIPS(net=net, verbose=False)
    except _LOAD_ERRORS as err:
        raise WeightsUnavailable(
            f"LPIPS-{net} needs torchvision's ImageNet {net} backbone at {expected} (set TORCH_HOME to move the "
            f"cache), which is missing or unreadable and could not be downloaded from {url}: "
            f"{type(err).__name__}: {err}"
        ) from None
    return model.eval().requires_grad_(False)


def perceptual_network(mode: str, net: str = "alex") -> tuple[lpips.LPIPS | None, str | None]:
    """The LPIPS network for a perceptual training loss, by `mode`:

    "lpips": the network, or WeightsUnavailable; "auto": the network, or (None, reason) with a logged warning;
    "off": (None, "disabled by params"). The second element is None whenever a network is returned.
    """
    if mode == "off":
        return None, "disabled by params"
    if mode not in ("auto", "lpips"):
        raise ValueError(f"mode: got {mode!r}; allowed: 'auto', 'lpips', 'off'")
    try:
        return load_lpips(net), None
    except WeightsUnavailable as err:
        if mode == "lpips":
            raise
        log.warning("perceptual loss disabled (perceptual: auto): %s", err)
        return None, str(err)


def inception_weights(path: str = "", params_key: str = "eval.inception_weights") -> Path:
    """The torch-fidelity Inception-v3 weights file: `path` when given (it must exist), else the hub-cache file,
    downloaded there first if missing. Raises WeightsUnavailable with the reason, naming `params_key`, the
    params key the path comes from."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if path:
        if not Path(path).is_file():
            raise WeightsUnavailable(f"Inception weights file {path} ({params_key}) does not exist; fix {params_key} "
                                     "or set it to \"\" to use the torch hub cache")
        return Path(path)
    target = hub_checkpoints() / _cached_name(URL_INCEPTION_V3)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), progress=False)
    except OSError as err:
        raise WeightsUnavailable(
            f"torch-fidelity's Inception-v3 weights are not at {target} and could not be downloaded from "
            f"{URL_INCEPTION_V3} ({type(err).__name__}: {err}); put the file there (or set TORCH_HOME) or give "
            f"its path in {params_key}"
        ) from None
    return target


def load_inception(path: str = "", params_key: str = "eval.inception_weights") -> FeatureExtractorInceptionV3:
    """torch-fidelity's Inception-v3 feature extractor (pool3, 2048 features) with the weights of
    `inception_weights(path, params_key)`, in eval mode. Input: uint8 (B, 3, H, W), any size (resized to 299
    inside)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = inception_weights(path, params_key)
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURES],
                                           feature_extractor_weights_path=str(weights))
    except _LOAD_ERRORS as err:
        raise WeightsUnavailable(
            f"{weights} is not a torch-fidelity Inception-v3 state dict ({type(err).__name__}: {err}); replace it"
        ) from None
