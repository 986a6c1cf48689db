"""`--shards` takes prepare's folder or the URL of a copy of it (README, remote shards): every stage that reads shards
hands a URL on its command line to the shard reader as it was given (a path type would fold `scheme://` to
`scheme:/`). A `file://` URL of the test shards stands in for `https://`: read through webdataset, no network."""

import contextlib
import importlib
import sys
from pathlib import Path
from unittest import mock

import pytest

from pipeline.core.tracking import Tracker
from pipeline.data.shards import load_images, shard_urls

REPO = Path(__file__).resolve().parents[1]


class Reached(Exception):
    """Raised where the stage hands its shards on: the rest of the stage is not under test."""


# stage module, the function of it that receives the shards, the shards' position among its arguments, what else
# of the module the stage calls first, and the stage's other required options
STAGES = [
    ("pipeline.training.vae_stage", "train_vae", 4, (), ("checkpoint", "metrics", "plots")),
    ("stages.train_ldm", "train_ldm", 2, (), ("autoencoder", "checkpoint", "metrics", "plots")),
    ("stages.eval_recon", "eval_recon", 2, (), ("checkpoint", "metrics", "plots")),
    ("stages.analyze_latents", "analyze_latents", 2, (), ("checkpoint", "metrics", "picture")),
    ("stages.eval_generation", "eval_generation", 3, ("load_sampler",), ("checkpoint", "autoencoder", "metrics",
                                                                         "grid")),
    ("stages.export_vae", "export_autoencoder", 1, ("register_autoencoder",), ("checkpoint", "out")),
]
MAINS = {"pipeline.training.vae_stage": "stages.pretrain_vae"}  # the module whose main() parses the arguments


@pytest.mark.parametrize("module_name, receiver, position, also_patched, options", STAGES,
                         ids=[stage[0].rsplit(".", 1)[1] for stage in STAGES])
def test_a_shard_url_on_the_command_line_reaches_the_shard_reader(module_name, receiver, position, also_patched,
                                                                 options, ldm_assets, tmp_path, monkeypatch):
    url = ldm_assets.shards.resolve().as_uri()  # file:///...
    module = importlib.import_module(module_name)
    received = []

    def receive(*args, **kwargs):
        received.append(args[position])
        raise Reached

    monkeypatch.setattr(module, receiver, receive)
    monkeypatch.setattr(module, "stage_run", lambda *args, **kwargs: contextlib.nullcontext(Tracker(None)))
    for name in also_patched:
        monkeypatch.setattr(module, name, mock.MagicMock(return_value=(mock.MagicMock(), mock.MagicMock())))
    stage = importlib.import_module(MAINS.get(module_name, module_name))
    others = [word for option in options for word in (f"--{option}", str(tmp_path / option))]
    monkeypatch.setattr(sys, "argv", [stage.__name__, "--params", str(REPO / "params.yaml"), "--shards", url, *others])
    with pytest.raises((Reached, SystemExit)) as ended:
        stage.main()
    assert ended.type is Reached, "the stage's parser refused the arguments"

    assert received == [url]
    local = shard_urls(ldm_assets.shards, "val")
    assert shard_urls(received[0], "val") == [f"{url}/{Path(path).name}" for path in local]
    assert [name for name, _ in load_images(shard_urls(received[0], "val"))] == [name for name, _ in load_images(local)]
