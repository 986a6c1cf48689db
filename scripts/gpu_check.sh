#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): VAE pretrain and finetune (with the discriminator) and LDM training steps
# with bf16 autocast, and the encoder benchmark at batch 32 next to the paper's Table 3, with peak GPU memory; one
# Markdown table, printed and written to reports/gpu_check.md (or $1). At most 5 minutes on one GPU, after
# `make setup` (which it runs when .venv is missing: a few minutes more, and it needs the package registry).
#
#     scripts/gpu_check.sh [OUT.md]          # extra arguments go to gpu_check.py, e.g. --steps 30
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-reports/gpu_check.md}"
shift $(( $# > 0 ? 1 : 0 ))

fail() { echo "gpu_check: $*" >&2; exit 1; }

# Fail fast, before any install: a GPU must be visible.
if command -v nvidia-smi >/dev/null; then
  gpus="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)" \
    || fail "nvidia-smi found no usable GPU: ${gpus}"
  echo "gpu_check: ${gpus}"
elif [ ! -e /dev/nvidia0 ] && [ ! -e /dev/nvidiactl ]; then
  fail "no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidia*); for the CPU code-path run: python scripts/gpu_check.py --device cpu"
fi

if [ ! -x .venv/bin/python ]; then
  echo "gpu_check: .venv missing; running make setup"
  make setup
fi
# Telemetry off, as the Makefile sets it.
export DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/python - <<'EOF' || fail "torch sees no CUDA device (see above); check the driver against torch's CUDA version"
import sys, torch
if not torch.cuda.is_available():
    print(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() is False",
          file=sys.stderr)
    sys.exit(1)
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
EOF

# 5 minutes at most: the parts share a 250 s budget (a part still running then is stopped and reported), plus
# start-up and the table.
timeout 300 .venv/bin/python scripts/gpu_check.py --device cuda --out "$out" "$@"
