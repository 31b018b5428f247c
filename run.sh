#!/usr/bin/env bash
# ./run.sh             the benchmark: 6 warm starts x 6 arms on the embedded default, writes results/
# ./run.sh test        run the test suite (extra arguments go to pytest)
# ./run.sh gcpo.py ... run one method file (or any script here) in .venv, e.g. ./run.sh gcpo.py --max_steps 20
# ./run.sh bench       seconds per step of each method, split by phase, and peak memory
set -euo pipefail
cd "$(dirname "$0")"

# A virtual environment with the pinned requirements, rebuilt when requirements.txt changes.
stamp=".venv/.installed-$(sha256sum requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (pinned requirements)..." >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  touch "$stamp"
fi
PY=.venv/bin/python

case "${1:-}" in
  test) shift; exec "$PY" -m pytest -q tests "$@" ;;
  bench) shift; exec "$PY" compare.py --bench "$@" ;;
  *.py) exec "$PY" "$@" ;;
  *) exec "$PY" compare.py "$@" ;;  # e.g. ./run.sh --full, ./run.sh --quick
esac
