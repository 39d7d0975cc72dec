p = 'fused_mla.py'; s = open(p).read()
a = """            _mla_item(acc, m, l, qa[:, h0:h1, :], k, kind, n_rot, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale,
                      0, 1, 0, kv_idx.shape[0], kv_tile)"""
assert s.count(a) == 1
s = s.replace(a, """            acc[:] = 1
            l[:] = 1""")
open(p, 'w').write(s)
