#!/usr/bin/env bash
# ./run.sh        train every method on the embedded default and print the results table
# ./run.sh test   run the test suite (extra arguments go to pytest)
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
  "") ;;
  *) echo "usage: ./run.sh [test [pytest args]]" >&2; exit 2 ;;
esac

for method in grpo_baseline gcpo cepo gold; do
  if [ -f "$method.py" ]; then
    echo "== $method" >&2
    "$PY" "$method.py" --output_dir "runs/$method" --overwrite_output_dir > "runs_$method.log.tmp" 2>&1 \
      || { cat "runs_$method.log.tmp" >&2; exit 1; }
    mkdir -p "runs/$method" && mv "runs_$method.log.tmp" "runs/$method/log.txt"
  fi
done
"$PY" report.py runs results
