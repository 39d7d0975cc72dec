p = 'fused_mla.py'; s = open(p).read()
def rep(a, b, n=1):
    global s
    assert s.count(a) == n, a
    s = s.replace(a, b)
rep("from .simd import PREFETCH_BYTES", '''from .simd import PREFETCH_BYTES, _I64
from llvmlite import ir
from numba import types as _nt
from numba.extending import intrinsic
@intrinsic
def rdtsc(typingctx):
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I64, [])
        return builder.call(ir.InlineAsm(fnty, "rdtsc\\n\\tshl $$32, %rdx\\n\\tor %rdx, %rax", "={rax},~{rdx}", side_effect=True), [])
    return _nt.int64(), codegen
PROF = np.zeros(8, np.int64)
PROF_ADDR = PROF.ctypes.data
@intrinsic
def addat(typingctx, a, v):
    def codegen(context, builder, signature, args):
        p = builder.inttoptr(args[0], _I64.as_pointer())
        builder.store(builder.add(builder.load(p), args[1]), p)
        return context.get_dummy_value()
    return _nt.none(_nt.int64, _nt.int64), codegen''')
rep('''    pf = np.int64(PREFETCH_BYTES)
    # (1) attn_norm''', '''    pf = np.int64(PREFETCH_BYTES)
    pa = np.int64(PROF_ADDR)
    T0 = rdtsc()
    # (1) attn_norm''')
rep('''    qa = np.empty(n_q, np.float32)
    kva = np.empty(n_kva, np.float32)
    nt_q = (n_q + ROW_TILE - 1) // ROW_TILE
''', '''    qa = np.empty(n_q, np.float32)
    kva = np.empty(n_kva, np.float32)
    nt_q = (n_q + ROW_TILE - 1) // ROW_TILE
    T1 = rdtsc()
    addat(pa + 0, np.int64(T1 - T0))
''')
rep('''    # (2) with q_lora''', '''    T2 = rdtsc()
    addat(pa + 8, np.int64(T2 - T1))
    # (2) with q_lora''')
rep('''    # (3) W_UK, FlashMLA, W_UV
    attn = np.empty((n_head, dv), np.float32)
''', '''    # (3) W_UK, FlashMLA, W_UV
    attn = np.empty((n_head, dv), np.float32)
    T3 = rdtsc()
    addat(pa + 16, np.int64(T3 - T2))
''')
rep('''    # (4) attn_output and the residual
    y = np.empty(n_embd, np.float32)
    _matvec_q(y, wo, wo_kind, attn.reshape(n_head * dv))
''', '''    # (4) attn_output and the residual
    T4 = rdtsc()
    addat(pa + 24, np.int64(T4 - T3))
    y = np.empty(n_embd, np.float32)
    _matvec_q(y, wo, wo_kind, attn.reshape(n_head * dv))
    T5 = rdtsc()
    addat(pa + 32, np.int64(T5 - T4))
    addat(pa + 40, np.int64(1))
''')
open(p, 'w').write(s)
