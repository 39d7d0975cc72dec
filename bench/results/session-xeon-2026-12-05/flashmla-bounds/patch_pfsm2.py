# half the softmax-time share before softmax_t, half before p16
p = 'attention_mla_amx16.py'; s = open(p).read()
def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
rep("    n_parts = nkb + dv // (2 * GROUP)  # a tile's score steps and value steps",
    "    n_parts = nkb + dv // (2 * GROUP) + 2")
rep("        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)",
    "        prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, n_parts - 2, n_parts, row_bytes)\n        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)\n        prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, n_parts - 1, n_parts, row_bytes)")
open(p, 'w').write(s)
