# On top of ../flashmla-bounds/patch_prof.py: flash_attn_mla's parts timed (rdtsc) per KV split: the item, its
# finish (partials out), and once per call the merge region and the whole call; splitprof.py prints them.
p = 'attention_mla.py'; s = open(p).read()
def rep(a, b, n=1):
    global s
    assert s.count(a) == n, a
    s = s.replace(a, b)
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
PROF3 = np.zeros(4 * 64 + 8, np.int64)
PROF3_ADDR = PROF3.ctypes.data''')
rep('''    split_len, pm, pl, pacc = split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv)
    for it in prange(n_qt * n_split):
        _, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, split_len, n_kv, dv, n_head)
        if use16:''', '''    pb = np.int64(PROF3_ADDR)
    A0 = rdtsc()
    split_len, pm, pl, pacc = split_partials(n_kv, n_split, kv_tile, n_tok, n_head, dv)
    for it in prange(n_qt * n_split):
        X0 = rdtsc()
        _, sp, t0, t1, c0, c1, acc, m, l = work_item(it, n_split, n_qt, q_tile, n_tok, split_len, n_kv, dv, n_head)
        X1 = rdtsc()
        if use16:''')
rep('''        finish_item(dst, pm, pl, pacc, acc, m, l, t0, 0, n_head, sp, n_split)
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):
        merge_split_row(dst, pm, pl, pacc, th // n_head, th % n_head)
    _keep(amx_cfg, qp)''', '''        X2 = rdtsc()
        finish_item(dst, pm, pl, pacc, acc, m, l, t0, 0, n_head, sp, n_split)
        X3 = rdtsc()
        addat(pb + 8 * 8 + it * 32, np.int64(X1 - X0))
        addat(pb + 8 * 8 + it * 32 + 8, np.int64(X2 - X1))
        addat(pb + 8 * 8 + it * 32 + 16, np.int64(X3 - X2))
    A1 = rdtsc()
    if n_split == 1:
        return
    for th in prange(n_tok * n_head):
        merge_split_row(dst, pm, pl, pacc, th // n_head, th % n_head)
    A2 = rdtsc()
    addat(pb, np.int64(A1 - A0))
    addat(pb + 8, np.int64(A2 - A1))
    addat(pb + 16, np.int64(1))
    _keep(amx_cfg, qp)''')
open(p, 'w').write(s)
