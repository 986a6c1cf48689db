"""An autoencoder export written the way train_ldm encodes (compiled encoder) loads anywhere, records the code that
wrote it, and weights that no longer fit the model this code builds fail naming the export and that code."""

import json
import re
import shutil
import subprocess

import pytest
import torch
from fixtures_export import CPU, REPO
from fixtures_ldm import tiny_ldm
from safetensors.torch import load_file, save_file

from models.autoencoder import Autoencoder, AutoencoderConfig
from pipeline.config.parsing import parse
from pipeline.config.schema import SpeedConfig
from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.errors import UserError
from pipeline.export import load_autoencoder
from pipeline.export.layout import CONFIG, MODEL_CARD, WEIGHTS, sha256_file
from pipeline.export.writer import export_autoencoder


@pytest.fixture(scope="module")
def compiled_export(ldm_assets, tmp_path_factory):
    """The tiny autoencoder exported with `speed.compile: on`, the switch train_ldm encodes with on a GPU. Dynamo's
    eager backend wraps the encoder exactly as inductor does (an OptimizedModule, whose state dict keys carry
    `_orig_mod.`) without inductor's minutes of code generation on the CPU."""
    compiled = []
    real_compile = torch.compile

    def eager_compile(module, **options):
        compiled.append(module)
        return real_compile(module, **options, backend="eager")

    root = tmp_path_factory.mktemp("compiled")
    state = load_checkpoint(ldm_assets.autoencoder)
    save_checkpoint(root / "finetune_vae.pt", {**state, "config": {**state["config"], "train": {"resolution": 32}}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", eager_compile)
        export_autoencoder(root / "finetune_vae.pt", ldm_assets.shards, tiny_ldm(), root / "autoencoder", CPU, {},
                           speed=SpeedConfig(compile="on"))
    assert len(compiled) == 1  # the statistics did go through a compiled encoder
    return root / "autoencoder"


def test_a_compiled_export_loads_into_a_fresh_autoencoder(compiled_export, ldm_assets):
    state = load_checkpoint(ldm_assets.autoencoder)
    fresh = Autoencoder(parse(AutoencoderConfig, state["config"]["model"]["vae"], "vae"))
    fresh.load_state_dict(load_file(str(compiled_export / WEIGHTS)))  # strict: the plain module's keys
    vae = load_autoencoder(compiled_export)
    for name, tensor in state["ema"].items():
        assert torch.equal(vae.model.state_dict()[name], tensor), name


def test_config_and_card_record_the_code_version(compiled_export):
    from importlib.metadata import version

    commit = None
    if (REPO / ".git").exists():
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    code = json.loads((compiled_export / CONFIG).read_text())["code"]
    assert code == {"package": "litevae-pipeline", "version": version("litevae-pipeline"), "git_commit": commit}
    card = (compiled_export / MODEL_CARD).read_text()
    assert f"- exported by: litevae-pipeline {code['version']}, git commit {code['git_commit'] or 'unknown'}" in card


def test_weights_that_do_not_fit_fail_naming_the_export_its_format_and_code(compiled_export, tmp_path):
    """As an export written by other code (a renamed layer) would: a UserError, not a torch traceback."""
    other = shutil.copytree(compiled_export, tmp_path / "other")
    weights = load_file(str(other / WEIGHTS))
    weights["decoder.renamed"] = weights.pop(min(k for k in weights if k.startswith("decoder.")))
    save_file(weights, str(other / WEIGHTS))
    config = json.loads((other / CONFIG).read_text())
    (other / CONFIG).write_text(json.dumps({**config, "weights_sha256": sha256_file(other / WEIGHTS)}))
    code = config["code"]
    with pytest.raises(UserError, match=(
            rf"^{re.escape(str(other))}: its model.safetensors do not fit the model this code builds from its "
            rf"config.json \(format 'litevae-autoencoder/1', written by litevae-pipeline {code['version']}, git commit "
            rf"{code['git_commit'] or 'unknown'}\); .*Missing key.*decoder\.")):
        load_autoencoder(other)
