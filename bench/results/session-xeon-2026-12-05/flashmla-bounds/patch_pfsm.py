p = 'attention_mla_amx16.py'; s = open(p).read()
def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
rep("    n_parts = nkb + dv // (2 * GROUP)  # a tile's score steps and value steps",
    "    n_parts = nkb + dv // (2 * GROUP) + 4  # a tile's score steps, value steps and 4 shares before the softmax")
rep("        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)",
    "        for sh in range(4):\n            prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + dv // (2 * GROUP) + sh, n_parts, row_bytes)\n        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)")
open(p, 'w').write(s)
