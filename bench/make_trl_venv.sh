#!/usr/bin/env bash
# A separate environment with TRL for bench/rm_trl.py (the side-by-side with `rlhf rm`).
# It never touches .venv; .venv-trl must be gitignored. Usage: bash bench/make_trl_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv-trl/bin/python ]; then
  "$PY" -m venv .venv-trl
fi
# Same torch and transformers as the main environment, so only the trainer differs.
TRANSFORMERS=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
# peft too (the LoRA pairing, bench/dpo_vs_trl.py --lora-r), at the main environment's version.
PEFT=$(.venv/bin/python -c "import peft; print(peft.__version__)")
.venv-trl/bin/pip install --quiet "torch==2.13.0" "trl==1.16.0" "transformers==${TRANSFORMERS}" "peft==${PEFT}" psutil
.venv-trl/bin/python -c "import torch, trl, transformers; print('torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
