# On top of ../flashmla-bounds/patch_prof.py: flash_attn_mla's items region per thread (rdtsc): each thread's busy time
# (items and finishes) and when its last item ended, from the region's start; threadprof.py prints them. (get_thread_id
# makes the copy uncacheable: it compiles in every run.)
p = 'attention_mla.py'; s = open(p).read()
def rep(a, b, n=1):
    global s
    assert s.count(a) == n, a
    s = s.replace(a, b)
rep("from numba import njit, prange", "from numba import njit, prange, get_thread_id")
rep("from .simd import prefetch", '''from .simd import prefetch, _I64
from llvmlite import ir
from numba import types as _nt
from numba.extending import intrinsic
@intrinsic
def rdtsc(typingctx):
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I64, [])
        return builder.call(ir.InlineAsm(fnty, "rdtsc\\n\\tshl $$32, %rdx\\n\\tor %rdx, %rax", "={rax},~{rdx}", side_effect=True), [])
    return _nt.int64(), codegen
@intrinsic
def addat(typingctx, a, v):
    def codegen(context, builder, signature, args):
        p = builder.inttoptr(args[0], _I64.as_pointer())
        builder.store(builder.add(builder.load(p), args[1]), p)
        return context.get_dummy_value()
    return _nt.none(_nt.int64, _nt.int64), codegen
@intrinsic
def setat(typingctx, a, v):
    def codegen(context, builder, signature, args):
        builder.store(args[1], builder.inttoptr(args[0], _I64.as_pointer()))
        return context.get_dummy_value()
    return _nt.none(_nt.int64, _nt.int64), codegen
@intrinsic
def getat(typingctx, a):
    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], _I64.as_pointer()))
    return _nt.int64(_nt.int64), codegen
PROF3 = np.zeros(64, np.int64)
PROF3_ADDR = PROF3.ctypes.data''')
rep('''    split_len, pm, pl, pacc = split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv)
    for it in prange(n_qt * n_split):
        _, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, split_len, n_kv, dv, n_head)
        if use16:''', '''    P3 = np.int64(PROF3_ADDR)
    A0 = rdtsc()
    split_len, pm, pl, pacc = split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv)
    for it in prange(n_qt * n_split):
        X0 = rdtsc()
        _, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, split_len, n_kv, dv, n_head)
        if use16:''')
rep('''        finish_item(dst, pm, pl, pacc, acc, m, l, t0, 0, n_head, sp, n_split)
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):''', '''        finish_item(dst, pm, pl, pacc, acc, m, l, t0, 0, n_head, sp, n_split)
        X1 = rdtsc()
        tid = get_thread_id()
        addat(P3 + (8 + tid * 4) * 8, X1 - X0)
        setat(P3 + (8 + tid * 4 + 1) * 8, X1)
        addat(P3 + (8 + tid * 4 + 3) * 8, np.int64(1))
    A1 = rdtsc()
    if n_split > 1:
        addat(P3, A1 - A0)
        addat(P3 + 8, np.int64(1))
        for th in range(8):
            e1 = getat(P3 + (8 + th * 4 + 1) * 8)
            if e1 > 0:
                addat(P3 + (8 + th * 4 + 2) * 8, e1 - A0)
                setat(P3 + (8 + th * 4 + 1) * 8, np.int64(0))
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):''')
open(p, 'w').write(s)
