#!/bin/bash
# mk.sh NAME [PATCH.py...]: $KV/NAME (default /tmp/kv) = a copy of this checkout's pyrt/_kernels with the patches
# applied in order (each a python file run in the copy's folder); fl2.py, ovl.py and blkprof.py import the copies.
#   for v in base nosm noacc; do ./mk.sh k$v $( [ $v = base ] || echo patch_$v.py ); done
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
kv=${KV:-/tmp/kv}; name=$1; shift
rm -rf "${kv:?}/$name"; mkdir -p "$kv"; cp -r "$root/pyrt/_kernels" "$kv/$name"; rm -rf "$kv/$name/__pycache__"
for p in "$@"; do (cd "$kv/$name" && python "$here/$p"); done
