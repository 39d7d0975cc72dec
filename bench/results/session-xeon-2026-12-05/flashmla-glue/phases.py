"""Copies this checkout's pyrt sources into a worktree (argv[1], default /tmp/wt_prof: git worktree add, the built
Cython module copied in) and adds rdtsc counters per phase to mla_item_amx16 (read by prof.py)."""
import os, subprocess, sys
dst = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wt_prof"
root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                      cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
subprocess.run(f"cd {root} && git ls-files pyrt | grep '[.]py$' | xargs -I{{}} cp {{}} {dst}/{{}}", shell=True, check=True)
p = f"{dst}/pyrt/_kernels/attention_mla_amx16.py"
s = open(p).read()
s = s.replace('''P_SCALE = np.float32(32768.0)''', '''from numba import types as _nt
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
    return _nt.none(_nt.int64, _nt.int64), codegen
P_SCALE = np.float32(32768.0)''')
def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
rep('''    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)
''', '''    pa = np.int64(PROF_ADDR)
    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)
        T0 = rdtsc()
''')
rep('''        n_pf = max(0, min(TILE, kv_idx.shape[0] - pf_c))
''', '''        n_pf = max(0, min(TILE, kv_idx.shape[0] - pf_c))
        T1 = rdtsc()
''')
rep('''        softmax_t(stp''', '''        T2 = rdtsc()
        softmax_t(stp''')
rep('''        for g in range(G):
            p16(''', '''        T3 = rdtsc()
        for g in range(G):
            p16(''')
rep('''    tile_release()
    inv''', '''        T4 = rdtsc()
        addat(pa, T1 - T0)
        addat(pa + 8, T2 - T1)
        addat(pa + 16, T3 - T2)
        addat(pa + 24, T4 - T3)
        addat(pa + 32, np.int64(1))
    tile_release()
    inv''')
open(p, "w").write(s)
