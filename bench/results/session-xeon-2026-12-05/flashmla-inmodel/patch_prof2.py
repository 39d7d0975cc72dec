# On top of ../flashmla-bounds/patch_prof.py: the one-region mla_decode's four items timed per phase (W_UK, the
# attention item, W_UV, whole), which ../flashmla-bounds/blkprof.py then prints.
p = 'fused_mla.py'; s = open(p).read()
def rep(a, b, n=1):
    global s
    assert s.count(a) == n, a
    s = s.replace(a, b)
rep("PROF = np.zeros(8, np.int64)", "PROF = np.zeros(8, np.int64)\nPROF2 = np.zeros(64, np.int64)\nPROF2_ADDR = PROF2.ctypes.data")
rep('''            h0 = g * HEAD_GROUP
            h1 = h0 + HEAD_GROUP
''', '''            h0 = g * HEAD_GROUP
            h1 = h0 + HEAD_GROUP
            pb = np.int64(PROF2_ADDR) + g * 32
            U0 = rdtsc()
''')
rep('''            acc = np.empty((HEAD_GROUP, C), dtype=np.float32)
            m = np.empty(HEAD_GROUP, dtype=np.float32)''', '''            U1 = rdtsc()
            addat(pb, np.int64(U1 - U0))
            acc = np.empty((HEAD_GROUP, C), dtype=np.float32)
            m = np.empty(HEAD_GROUP, dtype=np.float32)''')
rep('''            og = np.empty((HEAD_GROUP, C), dtype=np.float32)''', '''            U2 = rdtsc()
            addat(pb + 8, np.int64(U2 - U1))
            og = np.empty((HEAD_GROUP, C), dtype=np.float32)''')
rep('''                         np.int64(oc.ctypes.data) + r * nbo * AUX_BYTES, np.int64(nbo), ok[r], nbok, dst[h0 + r], pf)
        return''', '''                         np.int64(oc.ctypes.data) + r * nbo * AUX_BYTES, np.int64(nbo), ok[r], nbok, dst[h0 + r], pf)
            U3 = rdtsc()
            addat(pb + 16, np.int64(U3 - U2))
            addat(pb + 24, np.int64(U3 - U0))
        return''')
open(p, 'w').write(s)
