#!/bin/bash
# pairs.sh N OUT [FILE]: N pairs of TG at N_KV 0, one engine per process (odd pairs pyrt first, even ik first):
# pyrt bench run -p 0 -n 32 -r 3 -t 2 -mla 3 and ik's llama-bench -p 0 -n 32 -r 3 -t 2 -fa 1 -mla 3 -rtr 1.
F=${3:-$HOME/.cache/pyrt/dsv2lite-q4_k_m.gguf}; IK=${IK_BIN:-$HOME/.cache/ik_llama/build/bin}
p() { pyrt bench run -m "$F" -p 0 -n 32 -r 3 -t 2 -mla 3 2>/dev/null | grep "| pyrt"; }
k() { "$IK/llama-bench" -m "$F" -p 0 -n 32 -r 3 -t 2 -fa 1 -mla 3 -rtr 1 2>/dev/null | grep tg32; }
for i in $(seq 1 "$1"); do
  if [ $((i % 2)) = 1 ]; then p; k; else k; p; fi
done | tee "$2"
