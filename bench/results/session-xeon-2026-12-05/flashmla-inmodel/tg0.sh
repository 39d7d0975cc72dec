# TG at N_KV 0, pyrt and ik alternating, three pairs
export PATH=/work/main/.venv/bin:$PATH NUMBA_CACHE_DIR=/tmp/ncm1 PYRT_CACHE=/tmp/pyrt-cache
F=~/.cache/pyrt/dsv2lite-q4_k_m.gguf
pyrt bench membw -t 2 2>&1 | tail -1
for i in 1 2 3; do
 pyrt bench run -m $F -p 0 -n 32 -r 3 -t 2 -mla 3 2>&1 | grep -E "tg|t/s" | tail -2
 ~/.cache/ik_llama/build/bin/llama-bench -m $F -p 0 -n 32 -r 3 -t 2 -fa 1 -mla 3 -rtr 1 2>&1 | grep tg
done
