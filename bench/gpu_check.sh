#!/usr/bin/env bash
# GPU readiness in one run, on a machine with one CUDA GPU, from a fresh clone (about 5-8 minutes on an H100/H200):
#   1. a CUDA build of torch and the project in .venv-gpu (the wheel index is yours: it must match your driver),
#   2. the tests marked `gpu` (bf16 against fp32 for loss and generation, the KV-cached latent loop on CUDA,
#      FSDP2 on one device),
#   3. bench/gpu_train.py: a Qwen2.5-VL-3B-size random model in bf16 with activation checkpointing, lare against
#      text_cot: tokens/s, peak memory, MFU (its FLOP formula is in the file) and the lare/text_cot step ratio.
# Everything lands in bench/results/gpu.json (and the tests' log beside it).
#
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash bench/gpu_check.sh
#   LARE_NO_INSTALL=1 bash bench/gpu_check.sh        # use this environment's python3 as it is (torch with CUDA,
#                                                    # transformers, tokenizers, pyyaml, pillow, safetensors, psutil)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
RESULTS=bench/results
mkdir -p "$RESULTS"

if [[ -z "${LARE_NO_INSTALL:-}" ]]; then
  : "${TORCH_INDEX_URL:?set TORCH_INDEX_URL to the PyTorch wheel index for your CUDA driver (e.g. https://download.pytorch.org/whl/cu128), or LARE_NO_INSTALL=1 to use this python as it is}"
  "$PY" -m venv .venv-gpu
  PY=.venv-gpu/bin/python
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch>=2.6,<2.15" --index-url "$TORCH_INDEX_URL"
  "$PY" -m pip install -q -e ".[dev,gpu]"
fi
"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device: install a CUDA build (TORCH_INDEX_URL)"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
EOF

# The gpu tests need none of Ray, MLflow or the data pipelines: a bare image with torch and transformers runs them.
status=0
"$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml="$RESULTS/gpu_tests.xml" 2>&1 \
  | tee "$RESULTS/gpu_tests.log" || status=$?
"$PY" bench/gpu_train.py --activation-checkpointing --tests-junit "$RESULTS/gpu_tests.xml" --out "$RESULTS/gpu.json"
echo "wrote $RESULTS/gpu.json (gpu tests exit status $status)"
exit $status
