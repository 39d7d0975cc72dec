p = 'attention_mla_amx16.py'; s = open(p).read()
def rep(a, b, n=1):
    global s
    assert s.count(a) == n, a
    s = s.replace(a, b)
rep("P_SCALE = np.float32(32768.0)", '''from llvmlite import ir as _ir
from numba import types as _nt
@intrinsic
def rdtsc(typingctx):
    def codegen(context, builder, signature, args):
        fnty = _ir.FunctionType(_I64, [])
        return builder.call(_ir.InlineAsm(fnty, "rdtsc\\n\\tshl $$32, %rdx\\n\\tor %rdx, %rax", "={rax},~{rdx}", side_effect=True), [])
    return _nt.int64(), codegen
P_SCALE = np.float32(32768.0)''')
rep('''    tile_config(cfgp)
    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)''', '''    T0 = rdtsc()
    tile_config(cfgp)
    for cb in range(c0, c1, TILE):
        ti = (cb - c0) // TILE
        if ti < 64:
            prof[ti + 1] += rdtsc() - T0
        nc = min(TILE, c1 - cb)''')
rep('''    tile_release()
    inv = np.float32(1.0) / P_SCALE''', '''    tile_release()
    prof[0] += rdtsc() - T0
    prof[65] += 1
    inv = np.float32(1.0) / P_SCALE''')
rep("c1, g0, cfgp):\n    \"\"\"attention_mla_amx.mla_item_amx for", "c1, g0, cfgp, prof):\n    \"\"\"attention_mla_amx.mla_item_amx for")
open(p, 'w').write(s)
