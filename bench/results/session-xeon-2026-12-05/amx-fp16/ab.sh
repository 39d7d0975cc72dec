#!/bin/bash
# ab.sh "N THREADS MODE REPS" ROUNDS: d16only.py alternating between a worktree of the previous commit at
# /tmp/wt_old (git worktree add /tmp/wt_old HEAD~1, with the built Cython module copied in) and this checkout,
# each with its own kernel cache; ENVS adds variables (ONE=1: one cache for all layers).
here=$(cd "$(dirname "$0")" && pwd)
new=$(cd "$here/../../../.." && pwd)
args=$1; rounds=${2:-3}
for r in $(seq "$rounds"); do
  for v in old new; do
    if [ $v = old ]; then root=/tmp/wt_old; ncd=/tmp/nc_old; else root=$new; ncd=/tmp/nc_new; fi
    (cd "$root" && env $ENVS PYTHONPATH="$root" NUMBA_CACHE_DIR=$ncd python "$here/d16only.py" $args 2>&1 | tail -1 | sed "s/^/$v /")
  done
done
