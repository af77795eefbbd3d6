#!/usr/bin/env bash
# GPU check: CDAnet stage 1 and stage 2 at Taobao table sizes with bf16 autocast for a few hundred
# steps, then a tiny end-to-end run for its AUC (benchmarks/gpu_check.py). Under 5 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine, from a copy of the repository
#   bash benchmarks/gpu_check.sh --device cpu --tiny  # the same code path on CPU (what CI runs)
#
# Nothing outside the machine is reached: it uses the CUDA build of torch already installed there
# (PYTHON=/path/to/python to choose the interpreter; default: .venv/bin/python, else python3) and
# the repository itself on PYTHONPATH. Other missing packages are installed only from a local
# wheel folder (WHEELHOUSE=/path, pip --no-index); otherwise the script names them and stops.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check: no Python interpreter '$PY' (set PYTHON=/path/to/python)" >&2
  exit 2
fi

want_cuda=1
for arg in "$@"; do [[ "$arg" == "cpu" ]] && want_cuda=0; done

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check: torch is not installed for $PY; this script does not download it: install the CUDA build" \
       "of torch on this machine (or set PYTHON= to an interpreter that has it)" >&2
  exit 2
fi
if [[ $want_cuda == 1 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" -c "import torch; print(f'gpu_check: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device;', 'use a CUDA build of torch on a GPU machine, or pass --device cpu --tiny')" >&2
  exit 2
fi

# The packages the check imports besides torch (cdanet's model code reads its schema with pyarrow).
missing=$("$PY" - <<'PY'
import importlib.util
print(" ".join(m for m in ("numpy", "pyarrow", "pandas", "sklearn", "tqdm", "yaml") if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  if [[ -n "${WHEELHOUSE:-}" ]]; then
    pkgs=${missing/sklearn/scikit-learn}; pkgs=${pkgs/yaml/pyyaml}
    echo "gpu_check: installing $pkgs from $WHEELHOUSE (offline)"
    # shellcheck disable=SC2086
    "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" $pkgs
  else
    echo "gpu_check: missing Python packages: $missing (set WHEELHOUSE= to a folder of wheels to install them offline)" >&2
    exit 2
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec timeout 300 "$PY" -m benchmarks.gpu_check "$@"
