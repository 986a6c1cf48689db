"""Stand-ins for pretrained weights: randomly initialised weights of the right architectures, placed where
torchvision (LPIPS's backbone) and torch-fidelity (Inception-v3) look, `$TORCH_HOME/hub/checkpoints`. The
values are meaningless; the files exercise the real loading and metric code. Downloads always fail here, as on
a machine without internet, so no test ever reaches the network.

Registered for every test by `pytest_plugins` in conftest.py: request `pretrained_weights` or `missing_weights`
by name; import only the file names (`INCEPTION_FILE`, `ALEXNET_FILE`).
"""

from pathlib import Path
from unittest import mock
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch_fidelity import feature_extractor_inceptionv3 as inception_module

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


@pytest.fixture(scope="session")
def random_weights_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds random AlexNet and torch-fidelity Inception-v3 weights."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoints / ALEXNET_FILE)
    # torch-fidelity's extractor always loads weights in __init__; skip that to get its freshly initialised layout.
    with mock.patch.object(inception_module, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(inception_module.FeatureExtractorInceptionV3, "load_state_dict"):
        extractor = inception_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(extractor.state_dict(), checkpoints / INCEPTION_FILE)
    return home


@pytest.fixture
def no_downloads(monkeypatch):
    """Every torch.hub download fails at once."""
    def refuse(url, *args, **kwargs):
        raise URLError(f"downloads are disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def pretrained_weights(random_weights_home, monkeypatch, no_downloads) -> Path:
    """TORCH_HOME with the random weights in place; returns its hub checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(random_weights_home))
    return random_weights_home / "hub" / "checkpoints"


@pytest.fixture
def missing_weights(tmp_path, monkeypatch, no_downloads) -> Path:
    """An empty TORCH_HOME: no weights cached and none downloadable; returns its hub checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"
