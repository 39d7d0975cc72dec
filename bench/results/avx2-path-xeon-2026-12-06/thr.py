"""pyrt bench with BLAS_MIN_TOKENS overridden: thr.py 'Q4_0=N,Q8_0=N,...' bench args..."""
import sys
from pyrt.ops import matmul as mm
for kv in sys.argv[1].split(","):
    if kv:
        k, v = kv.split("="); mm.BLAS_MIN_TOKENS[k] = int(v)
print("BLAS_MIN_TOKENS", mm.BLAS_MIN_TOKENS, file=sys.stderr)
from pyrt.cli import main
sys.argv = ["pyrt"] + sys.argv[2:]
sys.exit(main())
