#!/bin/bash
# Alternate one script between two checkouts, process by process (old, new, old, new ...).
# usage: OLD=/path/to/old/worktree benchmarks/dev/old_vs_new.sh ROUNDS SCRIPT
#   e.g. git worktree add /tmp/old d966c39; OLD=/tmp/old BATCHES=32,128 \
#        benchmarks/dev/old_vs_new.sh 2 benchmarks/dev/step_rate.py
# The script gets "old" or "new" as its last argument and runs with that checkout first on
# PYTHONPATH. Under load: start `python3 -c "while True: pass" &` first, kill it after.
NEW=$(cd "$(dirname "$0")/../.." && pwd)
SCRIPT=$(realpath "$2")
for r in $(seq "$1"); do
  (cd "$OLD" && PYTHONPATH="$OLD" "$NEW/.venv/bin/python" "$SCRIPT" old)
  (cd "$NEW" && PYTHONPATH="$NEW" "$NEW/.venv/bin/python" "$SCRIPT" new)
done
