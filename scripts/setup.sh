#!/usr/bin/env bash
# Set up ./.venv with e5mistral (editable) and its test extras. Safe to run again.
#
# torch is installed first and on its own, so that the package's `torch>=2.13` requirement is
# already met and pip never pulls a CUDA build on a machine without a GPU:
#   - with an NVIDIA GPU (nvidia-smi works): the default PyPI build (CUDA);
#   - otherwise: the pinned release E5MISTRAL_TORCH (default torch==2.13.0), which resolves to a
#     local CPU wheel where the machine provides one through pip's find-links; elsewhere point
#     PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" install "torch>=2.13"
  else
    "${pip[@]}" install "${E5MISTRAL_TORCH:-torch==2.13.0}"
  fi
fi
"${pip[@]}" install -q -e ".[tests]"
.venv/bin/python -c "import torch, e5mistral; print(f'e5mistral {e5mistral.__version__} ready (torch {torch.__version__}, CUDA: {torch.cuda.is_available()})')"
