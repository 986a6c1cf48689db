"""How `dvc repro` starts a training stage: in this process, or under torchrun as the `launch` params say.

    python -m pipeline.core.launch stages.pretrain_vae --shards data/shards ...   (dvc.yaml's command)

The launcher reads the `launch` section of the stage's params file (the stage's own `--params`, default
params.yaml), validating the whole file first. With nproc_per_node x nnodes == 1 it runs the stage module in
this process; otherwise it runs torchrun (`torch.distributed.run`) in this process, which starts the same module
and arguments on this node's ranks. torchrun itself exits 1 whatever a rank exited with, so the launcher reads the
ranks' exit codes from torchrun's failure report and exits 2 when a rank ended with a user error: the Prefect flow
does not retry those, with one process or many. One node rendezvouses on a free local port (`--standalone`);
several nodes use a static rendezvous at `launch.rdzv_endpoint`, where node 0 (the node running DVC) holds global
ranks 0..nproc_per_node-1, so the one process that writes outputs and logs runs beside DVC. Every other node joins
with its rank, reading the same shared checkout:

    python -m pipeline.core.launch --node-rank 1 --stage pretrain_vae     (dvc.yaml's command of that stage)

The node rank is an argument, not a param: params.yaml is shared by the nodes, and which node runs which ranks
changes no result.
"""

from __future__ import annotations

import argparse
import runpy
import shlex
import sys
from pathlib import Path

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from pipeline.config.parsing import read_yaml
from pipeline.config.schema import LaunchConfig, load_params
from pipeline.core.cli import exit_on_user_error
from pipeline.core.errors import USER_ERROR_EXIT, UserError

LAUNCHER = "pipeline.core.launch"
# The launch keys a launched stage lists as DVC params: the world size changes each rank's random stream.
WORLD_SIZE_PARAMS = ("launch.nproc_per_node", "launch.nnodes")


def torchrun_options(cfg: LaunchConfig, node_rank: int) -> list[str]:
    """torch.distributed.run's options for this node of a run with world size > 1."""
    if cfg.nnodes == 1:
        return ["--standalone", f"--nproc_per_node={cfg.nproc_per_node}"]
    return [f"--nnodes={cfg.nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={cfg.nproc_per_node}",
            "--rdzv_backend=static", f"--rdzv_endpoint={cfg.rdzv_endpoint}"]


def stage_command(dvc_yaml: Path, stage: str) -> list[str]:
    """The stage module and its arguments from `stage`'s dvc.yaml command (which must run this launcher)."""
    stages = read_yaml(dvc_yaml).get("stages", {})
    if stage not in stages:
        raise UserError(f"{dvc_yaml}: no stage '{stage}'; stages: {sorted(stages)}")
    words = shlex.split(stages[stage]["cmd"])
    if words[1:3] != ["-m", LAUNCHER] or len(words) < 4:
        raise UserError(f"{dvc_yaml}: stage '{stage}' does not run through `python -m {LAUNCHER}`, so it runs "
                        "on one process only; run it with `dvc repro` on node 0 alone")
    return words[3:]


def params_path(stage_args: list[str]) -> str:
    """The params file the stage will read: its `--params` argument, else params.yaml."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_known_args(stage_args)[0].params


def run_ranks(torchrun_args: list[str]) -> None:
    """torchrun with its command line `torchrun_args`, in this process, running this node's ranks; a failed rank
    raises torchrun's `ChildFailedError`, or SystemExit(USER_ERROR_EXIT) if a rank exited with it."""
    try:
        torchrun.run(torchrun.parse_args(torchrun_args))
    except ChildFailedError as err:
        if any(failure.exitcode == USER_ERROR_EXIT for failure in err.failures.values()):
            raise SystemExit(USER_ERROR_EXIT) from None  # the rank printed its one-line error
        raise


def launch(module: str, stage_args: list[str], node_rank: int = 0) -> None:
    """Run `python -m module *stage_args` in this process, or under torchrun with the `launch` params' world size."""
    cfg = load_params(params_path(stage_args), "launch")["launch"]
    if not 0 <= node_rank < cfg.nnodes:
        raise UserError(f"--node-rank {node_rank}: launch.nnodes is {cfg.nnodes}, so node ranks are 0 to "
                        f"{cfg.nnodes - 1}")
    if cfg.world_size == 1:
        sys.argv = [module, *stage_args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    torchrun_args = [*torchrun_options(cfg, node_rank), "-m", module, *stage_args]
    print(f"launch: world size {cfg.world_size} ({cfg.nnodes} node(s) x {cfg.nproc_per_node}), node {node_rank}: "
          f"{shlex.join([sys.executable, '-m', 'torch.distributed.run', *torchrun_args])}", flush=True)
    if cfg.nnodes > 1 and node_rank == 0:
        print(f"launch: waiting at {cfg.rdzv_endpoint} for nodes 1-{cfg.nnodes - 1}; on node N run, in this "
              f"checkout: python -m {LAUNCHER} --node-rank N {shlex.join([module, *stage_args])}", flush=True)
    run_ranks(torchrun_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (0: the node running DVC)")
    parser.add_argument("--stage", help="run this dvc.yaml stage's command (instead of MODULE ARGS)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="MODULE ARGS: the stage module and its arguments")
    args = parser.parse_args()
    if bool(args.stage) == bool(args.command):
        parser.error("give either --stage STAGE or a stage module with its arguments")
    module, *stage_args = stage_command(Path("dvc.yaml"), args.stage) if args.stage else args.command
    launch(module, stage_args, args.node_rank)


if __name__ == "__main__":
    exit_on_user_error(main)
