#!/bin/bash
# Two pyrt trees on one file, alternating, each in a Numba cache of its own:
#   ab.sh OLD_TREE NEW_TREE MODEL "BENCH ARGS" [ROUNDS]
# e.g. ab.sh /tmp/wt_old /work/main bench-llama-q4_0.gguf "-p 512 -n 0 -r 2" with PYRT_NO_AMX=1 for the dot
# kernels. A tree is a checkout with pyrt/kv's built extension copied in; the venv of the environment runs both.
old=$1 new=$2 model=$3 args=$4 rounds=${5:-2}
py=${PYTHON:-python}
for round in $(seq "$rounds"); do
  for tree in "$old" "$new"; do
    cache=/tmp/ab-cache-$(echo "$tree" | tr / _)
    line=$(cd /tmp && PYTHONPATH=$tree NUMBA_CACHE_DIR=$cache "$py" -c \
      "import sys; from pyrt.cli import main; sys.argv[0] = 'pyrt'; sys.exit(main())" \
      bench run -m "$model" $args -t 2 2>&1 | grep -E "^\| pyrt" | tail -1)
    echo "round $round $tree: $line"
  done
done
