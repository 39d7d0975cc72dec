p = 'fused_mla.py'; s = open(p).read()
a = """            for h in range(h0, h1):
                _rows_q(kb_kind,"""
assert s.count(a) == 1
s = s.replace(a, """            for h in range(h0, h0):
                _rows_q(kb_kind,""")
s = s.replace("qa = np.empty((1, n_head, n_rot + C), np.float32)", "qa = np.zeros((1, n_head, n_rot + C), np.float32)")
open(p, 'w').write(s)
