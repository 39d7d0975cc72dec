#!/usr/bin/env bash
# pyrt against ik_llama.cpp on one GGUF file, one engine per process, same threads/-c/-ub/-n, then the
# merged ratio table (issue 17's comparison as one command).
#
#   bench/vs_ik.sh MODEL OUTDIR sweep   # pyrt bench sweep vs llama-sweep-bench: PP/TG at every N_KV
#   bench/vs_ik.sh MODEL OUTDIR run     # pyrt bench run vs llama-bench: ppP, tgN
#   GP=8192,32 P=0 N=0 bench/vs_ik.sh MODEL OUTDIR run   # only tg32@pp8192 (generation at depth; -gp on both)
#
# env: IK_BIN (default ~/.cache/ik_llama/build/bin, from ../shared/tools/build_ik_llama.sh), THREADS (2),
#      CTX (8704), UB (512), NGEN (16) for sweep; P (512), N (128), R (3), GP (none; "PP,TG ..." pairs) for run; ORDER (pyrt,ik);
#      IK_VERSION: the ik commit for meta.txt (a build from a source snapshot does not know it;
#      build_ik_llama.sh prints it); IK_ARGS: more flags for ik (e.g. IK_ARGS=--no-mmap for sweep,
#      IK_ARGS="-mmp 0" for run: ik's weights in anonymous memory, as pyrt reads them by default).
# deepseek2 files run with -mla 3 on both (ik also -rtr, its run-time repacking); f16 cache, flash attention.
# OUTDIR gets pyrt.md, ik.md, ratio.md and the CPU / membw / commit facts (meta.txt).
set -euo pipefail
MODEL=${1:?usage: bench/vs_ik.sh MODEL OUTDIR sweep|run}
OUT=${2:?usage: bench/vs_ik.sh MODEL OUTDIR sweep|run}
MODE=${3:-sweep}
IK_BIN=${IK_BIN:-$HOME/.cache/ik_llama/build/bin}
THREADS=${THREADS:-2}; CTX=${CTX:-8704}; UB=${UB:-512}; NGEN=${NGEN:-16}
P=${P:-512}; N=${N:-128}; R=${R:-3}; ORDER=${ORDER:-pyrt,ik}
GP_ARGS=(); for g in ${GP:-}; do GP_ARGS+=(-gp "$g"); done
read -r -a IK_EXTRA <<< "${IK_ARGS:-}"
case $MODE in sweep) IK=$IK_BIN/llama-sweep-bench ;; run) IK=$IK_BIN/llama-bench ;;
  *) echo "error: mode must be sweep or run, not '$MODE'" >&2; exit 2 ;; esac
[ -f "$MODEL" ] || { echo "error: $MODEL: no such file" >&2; exit 2; }
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
    pyrt bench sweep -m "$MODEL" -c "$CTX" -ub "$UB" -n "$NGEN" -t "$THREADS" "${MLA_P[@]}" | tee "$OUT/pyrt.md"
  else
    pyrt bench run -m "$MODEL" -p "$P" -n "$N" "${GP_ARGS[@]}" -r "$R" -t "$THREADS" "${MLA_P[@]}" | tee "$OUT/pyrt.md"
  fi
}
run_ik() {
  if [ "$MODE" = sweep ]; then
    "$IK" -m "$MODEL" -c "$CTX" -b "$UB" -ub "$UB" -n "$NGEN" -t "$THREADS" -fa on "${MLA_IK[@]}" -rtr "${IK_EXTRA[@]}" 2>&1 \
      | tee "$OUT/ik.md"
  else
    "$IK" -m "$MODEL" -p "$P" -n "$N" "${GP_ARGS[@]}" -r "$R" -t "$THREADS" -fa 1 "${MLA_B[@]}" -rtr 1 "${IK_EXTRA[@]}" \
      2>/dev/null | tee "$OUT/ik.md"
  fi
}
for e in ${ORDER//,/ }; do "run_$e"; done
echo "membw after: $(pyrt bench membw -t "$THREADS" 2>&1 | tail -1)" >> "$OUT/meta.txt"

python - "$OUT" "$MODE" <<'EOF' | tee "$OUT/ratio.md"
import sys, re
out, mode = sys.argv[1], sys.argv[2]


def rows(path):
    """The first markdown table of a file as lists of cells (header included), separator line dropped."""
    res = []
    for line in open(path, encoding="utf-8"):
        if not line.startswith("|"):
            if res:
                break
            continue
        if not re.match(r"^\|[-:| ]+\|\s*$", line):
            res.append([c.strip() for c in line.strip().strip("|").split("|")])
    return res


def num(s):
    return float(s.split("±")[0])


if mode == "sweep":
    def table(path):
        t = rows(path)
        h = t[0]
        return {int(r[h.index("N_KV")]): (num(r[h.index("S_PP t/s")]), num(r[h.index("S_TG t/s")])) for r in t[1:]}
    p, k = table(f"{out}/pyrt.md"), table(f"{out}/ik.md")
    print("| N_KV | pyrt S_PP | ik S_PP | PP ratio | pyrt S_TG | ik S_TG | TG ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sorted(set(p) & set(k)):
        (pp, pt), (kp, kt) = p[n], k[n]
        print(f"| {n} | {pp:.2f} | {kp:.2f} | {pp / kp:.2f} | {pt:.2f} | {kt:.2f} | {pt / kt:.2f} |")
else:
    def table(path):
        t = [r for r in rows(path) if len(r) > 2]
        h = t[0]
        return {r[h.index("test")]: r[h.index("t/s")] for r in t[1:]}
    p, k = table(f"{out}/pyrt.md"), table(f"{out}/ik.md")
    print("| test | pyrt t/s | ik t/s | ratio |")
    print("|---|---:|---:|---:|")
    for test in p:
        if test in k:
            print(f"| {test} | {p[test]} | {k[test]} | {num(p[test]) / num(k[test]):.2f} |")
EOF
