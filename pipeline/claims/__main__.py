"""The claims command: `python -m pipeline.claims {plan,run,report}` (see pipeline/claims/__init__.py).

    make claims                                              # = python -m pipeline.claims run
    python -m pipeline.claims run --profile profiles/claims_gpu.yaml    # the GPU-sized budget
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.claims.arms import arm_runs, check_overrides, estimated_seconds, pixels
from pipeline.claims.budget import load_profile
from pipeline.core.cli import exit_on_user_error

DEFAULT_PROFILE = Path("profiles/claims.yaml")


def plan(profile_path: Path, params_path: Path) -> None:
    """Print every arm's recipe, stages, budget, `-S` overrides (seed 0) and estimated minutes; run nothing."""
    profile = load_profile(profile_path)
    runs = arm_runs(profile, "claims-<id>")
    check_overrides(runs, params_path)
    budget = profile.budget
    total, known = 0.0, True
    print(f"{profile_path}: {len(budget.seeds)} seeds {list(budget.seeds)}, nz {budget.latent_channels}\n")
    for run in runs:
        if run.seed != budget.seeds[0]:
            continue
        seconds = estimated_seconds(run.arm, budget)
        known = known and seconds is not None
        total += (seconds or 0.0) * len(budget.seeds)
        first = run.arm.settings["train_128"]
        stages = f"{first['steps']} x {first['batch_size']} @ {first['resolution']} px"
        if run.arm.fine_tunes:
            stages += f" + {budget.finetune.steps} x {budget.finetune.batch_size} @ 256 px"
        estimate = f", ~{seconds / 60:.1f} min per seed" if seconds is not None else ""
        print(f"{run.arm.name}: {run.arm.description}\n  dvc exp run {' '.join(run.arm.targets)}: {stages}, "
              f"{pixels(run.arm, budget) / 1e6:.1f} Mpx{estimate}\n  -S " + " -S ".join(run.overrides) + "\n")
    if known:
        print(f"estimated total: {total / 60:.0f} min for {len(runs)} experiments (profile `estimate`)")
    else:
        print(f"{len(runs)} experiments; no time estimate (the profile has no `estimate`)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("plan", "run", "report"))
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="claims budget (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="run: the params.yaml every experiment starts from, the arms' overrides on top (copied "
                             "into the experiments' snapshot); plan: the file the overrides are checked against "
                             "(default: %(default)s)")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="report folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="run: retrain every stage (a rerun of the same code and budget is otherwise restored "
                             "from DVC's run cache: the same numbers, in seconds)")
    args = parser.parse_args()
    if args.command == "plan":
        plan(args.profile, args.params)
        return
    from pipeline.claims.runner import rerender, run_claims  # mlflow, torch: only when they are needed

    if args.command == "run":
        run_claims(args.profile, args.params, args.reports, args.force)
    else:
        print("\n".join(str(path) for path in rerender(args.reports)))


if __name__ == "__main__":
    exit_on_user_error(main)
