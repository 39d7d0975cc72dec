_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
export PATH=$_repo/.venv/bin:$PATH NUMBA_CACHE_DIR=/tmp/nc-avx2 PYRT_CACHE=/tmp/pyrt-cache-avx2
export NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave
export OPENBLAS_CORETYPE=Haswell
