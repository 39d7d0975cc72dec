#!/usr/bin/env bash
# pyrt against ik_llama.cpp on one GGUF file, one engine per process, same threads/-c/-ub/-n, then the
# merged ratio table (issue 17's comparison as one command).
#
#   bench/vs_ik.sh MODEL OUTDIR sweep   # pyrt bench sweep vs llama-sweep-bench: PP/TG at every N_KV
#   bench/vs_ik.sh MODEL OUTDIR run     # pyrt bench run vs llama-bench: ppP, tgN
#   GP=8192,32 P=0 N=0 bench/vs_ik.sh MODEL OUTDIR run   # only tg32@pp8192 (generation at depth; -gp on both)
#   ROUNDS=4 bench/vs_ik.sh MODEL OUTDIR run   # 4 rounds, the order reversed every other round; OUTDIR/roundI/ holds
#                                              # each round's tables, ratio.md each row's t/s per round and the
#                                              # median ratio (a machine whose speed moves between runs)
#
# env: IK_BIN (default ~/.cache/ik_llama/build/bin, from ../shared/tools/build_ik_llama.sh), THREADS (2),
#      CTX (8704), UB (512), NGEN (16) for sweep; P (512), N (128), R (3), GP (none; "PP,TG ..." pairs) for run; ORDER (pyrt,ik);
#      IK_VERSION: the ik commit for meta.txt (a build from a source snapshot does not know it;
#      build_ik_llama.sh prints it); IK_ARGS: more flags for ik (e.g. IK_ARGS=--no-mmap for sweep,
#      IK_ARGS="-mmp 0" for run: ik's weights in anonymous memory, as pyrt reads them by default).
# deepseek2 files run with -mla 3 on both (ik also -rtr, its run-time repacking); f16 cache, flash attention.
# OUTDIR gets pyrt.md, ik.md, ratio.md (bench/vs_ik_ratio.py) and the CPU / membw / commit facts (meta.txt).
set -euo pipefail
MODEL=${1:?usage: bench/vs_ik.sh MODEL OUTDIR sweep|run}
OUT=${2:?usage: bench/vs_ik.sh MODEL OUTDIR sweep|run}
MODE=${3:-sweep}
IK_BIN=${IK_BIN:-$HOME/.cache/ik_llama/build/bin}
THREADS=${THREADS:-2}; CTX=${CTX:-8704}; UB=${UB:-512}; NGEN=${NGEN:-16}
P=${P:-512}; N=${N:-128}; R=${R:-3}; ORDER=${ORDER:-pyrt,ik}; ROUNDS=${ROUNDS:-1}
GP_ARGS=(); for g in ${GP:-}; do GP_ARGS+=(-gp "$g"); done
read -r -a IK_EXTRA <<< "${IK_ARGS:-}"
case $MODE in sweep) IK=$IK_BIN/llama-sweep-bench ;; run) IK=$IK_BIN/llama-bench ;;
  *) echo "error: mode must be sweep or run, not '$MODE'" >&2; exit 2 ;; esac
[ -f "$MODEL" ] || { echo "error: $MODEL: no such file" >&2; exit 2; }
case $ROUNDS in ''|*[!0-9]*|0) echo "error: ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 2 ;; esac
[ -x "$IK" ] || { echo "error: $IK not built (../shared/tools/build_ik_llama.sh GIT_DIR)" >&2; exit 2; }
mkdir -p "$OUT"
ARCH=$(python -c "import sys; from pyrt.io.gguf_file import GGUFFile; print(GGUFFile(sys.argv[1], use_mmap=True).metadata.get('general.architecture', ''))" "$MODEL")
MLA_P=(); MLA_IK=(); MLA_B=()
if [ "$ARCH" = deepseek2 ]; then MLA_P=(-mla 3); MLA_IK=(-mla 3); MLA_B=(-mla 3); fi

{
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores)"
  echo "flags: $(grep -m1 -o -w -E 'avx512_vnni|amx_int8|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "pyrt: $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "ik: $IK (${IK_VERSION:-commit not recorded: set IK_VERSION})"
  echo "model: $MODEL ($ARCH), mode $MODE, threads $THREADS, ik flags +${IK_ARGS:-}${GP:+, -gp $GP}"
  if [ -n "${NUMBA_CPU_NAME:-}" ]; then  # pyrt compiled for another target than this CPU (e.g. an AVX2-only one)
    echo "pyrt target: NUMBA_CPU_NAME=$NUMBA_CPU_NAME NUMBA_CPU_FEATURES=${NUMBA_CPU_FEATURES:-}" \
      "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-}"
  fi
  dm=/sys/kernel/mm/damon/admin/kdamonds/0
  if [ "$(cat $dm/state 2>/dev/null)" = on ]; then
    echo "DAMON: on, scheme action $(cat $dm/contexts/0/schemes/0/action 2>/dev/null) (pages out idle memory)"
  fi
  echo "membw before: $(pyrt bench membw -t "$THREADS" 2>&1 | tail -1)"
} > "$OUT/meta.txt"

run_pyrt() {
  if [ "$MODE" = sweep ]; then
    pyrt bench sweep -m "$MODEL" -c "$CTX" -ub "$UB" -n "$NGEN" -t "$THREADS" "${MLA_P[@]}" | tee "$D/pyrt.md"
  else
    pyrt bench run -m "$MODEL" -p "$P" -n "$N" "${GP_ARGS[@]}" -r "$R" -t "$THREADS" "${MLA_P[@]}" | tee "$D/pyrt.md"
  fi
}
run_ik() {
  if [ "$MODE" = sweep ]; then
    "$IK" -m "$MODEL" -c "$CTX" -b "$UB" -ub "$UB" -n "$NGEN" -t "$THREADS" -fa on "${MLA_IK[@]}" -rtr "${IK_EXTRA[@]}" 2>&1 \
      | tee "$D/ik.md"
  else
    "$IK" -m "$MODEL" -p "$P" -n "$N" "${GP_ARGS[@]}" -r "$R" -t "$THREADS" -fa 1 "${MLA_B[@]}" -rtr 1 "${IK_EXTRA[@]}" \
      2>/dev/null | tee "$D/ik.md"
  fi
}
HERE=$(dirname "$0")
if [ "$ROUNDS" = 1 ]; then
  D=$OUT
  for e in ${ORDER//,/ }; do "run_$e"; done
  echo "membw after: $(pyrt bench membw -t "$THREADS" 2>&1 | tail -1)" >> "$OUT/meta.txt"
  python "$HERE/vs_ik_ratio.py" "$MODE" "$OUT" | tee "$OUT/ratio.md"
else
  # rounds in alternating order (ORDER, then reversed): each engine runs first as often as second
  REVERSED=$(echo "$ORDER" | tr ',' '\n' | tac | paste -sd, -)
  DIRS=()
  for i in $(seq 1 "$ROUNDS"); do
    D=$OUT/round$i; mkdir -p "$D"; DIRS+=("$D")
    if [ $((i % 2)) = 1 ]; then o=$ORDER; else o=$REVERSED; fi
    echo "round $i: $o" >> "$OUT/meta.txt"
    for e in ${o//,/ }; do "run_$e"; done
    python "$HERE/vs_ik_ratio.py" "$MODE" "$D" > "$D/ratio.md"
    echo "membw after round $i: $(pyrt bench membw -t "$THREADS" 2>&1 | tail -1)" >> "$OUT/meta.txt"
  done
  python "$HERE/vs_ik_ratio.py" "$MODE" "${DIRS[@]}" | tee "$OUT/ratio.md"
fi

