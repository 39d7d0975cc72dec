#!/usr/bin/env bash
# pyrt serve against llama-server on one GGUF file: each server runs alone (started, measured, stopped),
# then `pyrt bench serve --merge` prints both tables and the ratios. One command:
#   bench/serve_vs_llama_server.sh MODEL.gguf OUT_DIR [extra pyrt serve flags...]
# Environment: LLAMA_SERVER (default ~/.cache/llama_server/bin/llama-server, see
# ../shared/tools/build_llama_server.sh), THREADS (2), NP (4), CTX (8192), N (12 requests per load point),
# CONC (1,2,4,8), IN (128 prompt tokens), OUT (64 generated), PREFIX (512: shared-prefix run, 0 = skip),
# ORDER ("pyrt llama-server": which server runs first), PORT (18080).
set -euo pipefail
model=$1
out=$2
shift 2
ls_bin=${LLAMA_SERVER:-$HOME/.cache/llama_server/bin/llama-server}
threads=${THREADS:-2}
np=${NP:-4}
ctx=${CTX:-8192}
n=${N:-12}
conc=${CONC:-1,2,4,8}
in_len=${IN:-128}
out_len=${OUT:-64}
prefix=${PREFIX:-512}
port=${PORT:-18080}
mkdir -p "$out"
url=http://127.0.0.1:$port

wait_ready() {  # the server's /health answers 200 (both servers answer 503 while loading)
  for _ in $(seq 1 600); do
    if curl -sf "$url/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$1" 2>/dev/null; then echo "error: the server exited; see its log in $out" >&2; return 1; fi
    sleep 1
  done
  echo "error: the server did not become ready in 600 s" >&2
  return 1
}

measure() {  # label
  local label=$1
  pyrt bench serve --base-url "$url" --label "$label" --max-concurrency "$conc" -n "$n" \
    --input-len "$in_len" --output-len "$out_len" --ignore-eos --seed 900 --json "$out/${label}_conc.json"
  if [ "$prefix" -gt 0 ]; then
    pyrt bench serve --base-url "$url" --label "$label" --max-concurrency 4 -n "$n" --input-len 64 \
      --output-len 32 --shared-prefix-len "$prefix" --num-groups 4 --ignore-eos --seed 950 \
      --json "$out/${label}_prefix.json"
  fi
}

run_one() {  # label [pyrt serve flags...]
  local label=$1
  shift
  if [ "$label" = pyrt ]; then
    pyrt serve -m "$model" -c "$ctx" -np "$np" -t "$threads" --port "$port" "$@" >"$out/pyrt.log" 2>&1 &
  else
    "$ls_bin" -m "$model" -c "$ctx" -np "$np" -t "$threads" --host 127.0.0.1 --port "$port" \
      >"$out/llama-server.log" 2>&1 &
  fi
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  wait_ready "$pid"
  measure "$label"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  trap - EXIT
}

{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
  echo "# pyrt $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo '?'), model $model"
  echo "# threads $threads, -np $np, -c $ctx, $n requests per point, prompt $in_len, output $out_len"
} | tee "$out/facts.txt"
for label in ${ORDER:-pyrt llama-server}; do
  if [ "$label" = pyrt ]; then run_one pyrt "$@"; else run_one llama-server; fi
done
pyrt bench serve --merge "$out/pyrt_conc.json" "$out/llama-server_conc.json" | tee "$out/table.md"
if [ "$prefix" -gt 0 ]; then
  pyrt bench serve --merge "$out/pyrt_prefix.json" "$out/llama-server_prefix.json" | tee -a "$out/table.md"
fi
