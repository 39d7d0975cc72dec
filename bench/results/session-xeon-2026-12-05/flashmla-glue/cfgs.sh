# cfgs.sh REPS "cfg1" "cfg2" ...: min over REPS runs of each phase's cycles per tile
reps=$1; shift
for e in "$@"; do
  best=""
  for i in $(seq $reps); do
    rm -rf /tmp/nc_prof
    l=$(env $e PYTHONPATH=/tmp/wt_prof NUMBA_CACHE_DIR=/tmp/nc_prof ONE=1 python $(dirname "$0")/prof.py ${N:-1024} 1 fp16 ${R:-40} 2>&1 | grep "^tiles")
    best="$best\n$l"
  done
  echo "== $e"; echo -e "$best" | awk 'NF{for(i=5;i<=12;i+=2){k=$(i-1); v=$i; if(!(k in m)||v<m[k])m[k]=v}} END{printf "min: mask %d score %d softmax %d value %d\n", m["mask"], m["score"], m["softmax"], m["value"]}'
done
