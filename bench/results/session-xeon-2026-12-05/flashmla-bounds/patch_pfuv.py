p = 'fused_mla.py'; s = open(p).read()
a = """        for g in prange(n_head // HEAD_GROUP):
            h0 = g * HEAD_GROUP
            h1 = h0 + HEAD_GROUP
"""
assert s.count(a) == 1
s = s.replace(a, a + """            vbs = np.int64(v_b.strides[0])
            for h in range(h0, h1):  # the item's W_UV rows on their way while W_UK and the attention run
                va = np.int64(v_b.ctypes.data) + np.int64(v_row0[h]) * vbs
                for o in range(0, dv * vbs, 64):
                    prefetch(va + o)
            ka = np.int64(k_b.ctypes.data) + h0 * C * kbs
            for o in range(0, min(pf, HEAD_GROUP * C * kbs), 64):
                prefetch(ka + o)
""")
s = s.replace("from .simd import PREFETCH_BYTES", "from .simd import PREFETCH_BYTES, prefetch")
open(p, 'w').write(s)
