#!/usr/bin/env bash
# A separate environment for bench/ppo_trl.py's PPO side: TRL 1.9.2, the last TRL release that
# still ships PPO (trl.experimental.ppo.PPOTrainer). GRPO and RLOO run in .venv-trl (TRL 1.16,
# bench/make_trl_venv.sh). It never touches .venv; .venv-trl-ppo must be gitignored.
# torch stays pinned to 2.13.0, the main environment's (its CPU wheel is in pip's find-links):
# letting pip pick torch pulls several GB of CUDA libraries. Usage: bash bench/make_trl_ppo_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv-trl-ppo
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Same torch and transformers as the main environment, so only the trainer differs.
TRANSFORMERS=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
"$VENV/bin/pip" install --quiet "torch==2.13.0" "trl==1.9.2" "transformers==${TRANSFORMERS}" psutil
"$VENV/bin/python" -c "import torch, trl, transformers; from trl.experimental.ppo import PPOConfig, PPOTrainer; print('torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
