p = 'softmax.py'; s = open(p).read()
a = """    nt = qseq.shape[0]
    _tile_cells(cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq)
    qp = q_pos[t0:t0 + nt]
    any_vis = False
"""
assert s.count(a) == 1
s = s.replace(a, """    nt = qseq.shape[0]
    if nt == 1:  # one query (decode): cells in a vector loop
        sh = qseq[0]
        qp0 = q_pos[t0]
        n_vis = 0
        for j in range(nc):
            c = kv_idx[cb + j]
            ok = _sees(cell_seq[c], cell_pos[c], sh, qp0, n_swa)
            mask_t[j, 0] = np.float32(0.0) if ok else np.float32(-np.inf)
            cvis[j] = ok
            n_vis += ok
        return n_vis > 0
    _tile_cells(cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq)
    qp = q_pos[t0:t0 + nt]
    any_vis = False
""")
open(p, 'w').write(s)
