#!/usr/bin/env bash
# GPU session: every GPU measurement autoseg wants, in one call of a lent GPU machine. The session itself is
# benchmarks/gpu_session.py (its --help lists the steps and options: --dry-run, --tiny, --prepare, --steps A,B,
# --budget S, --out DIR, --datasets-root DIR, --nnunet-venv DIR); this wrapper only finds a python with torch and
# runs it there with the same arguments: $PYTHON when set, else the first of python3, python, /opt/torch/bin/python,
# the project's .venv and ../venv whose torch sees CUDA, else the first that has torch at all.
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
session=$repo/benchmarks/gpu_session.py
[[ -n ${PYTHON:-} ]] && exec "$PYTHON" "$session" "$@"
fallback=""
for candidate in python3 python /opt/torch/bin/python "$repo/.venv/bin/python" "$repo/../venv/bin/python"; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    cuda=$("$candidate" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null) || continue
    [[ $cuda == True ]] && exec "$candidate" "$session" "$@"
    fallback=${fallback:-$candidate}
done
# No CUDA: the first python with torch (enough for --dry-run, --tiny and --prepare), else python3, which says
# itself what it lacks (exit status 3).
exec "${fallback:-python3}" "$session" "$@"
