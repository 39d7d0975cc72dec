import time
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
F = ir.FloatType(); V = ir.VectorType(F, 16)
NACC = 12
@intrinsic
def fma_loop(typingctx, n):
    def cg(context, builder, sig, args):
        n, = args
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V, [V, V, V]), "llvm.fma.v16f32")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(V, [float(i + 1) * 1e-3] * 16)) for i in range(NACC)]
        x = ir.Constant(V, [0.999] * 16); y = ir.Constant(V, [1e-4] * 16)
        with cgutils.for_range(builder, n) as loop:
            for a in accs:
                builder.store(builder.call(fn, [builder.load(a), x, y]), a)
        s = builder.load(accs[0])
        for a in accs[1:]:
            s = builder.fadd(s, builder.load(a))
        return builder.extract_element(s, ir.Constant(ir.IntType(32), 0))
    return types.float32(types.int64), cg
@njit
def run(n):
    return fma_loop(n)
run(10)
n = 50_000_000
for _ in range(3):
    t = time.perf_counter(); run(n); dt = time.perf_counter() - t
    print(f"{NACC * 16 * n / dt / 1e9:.1f} GFMA/s one thread (zmm)")
