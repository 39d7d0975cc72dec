p = 'attention_mla_amx16.py'; s = open(p).read()
a = "        if not tile_mask_t(mask_t, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, 0):\n            continue\n"
assert s.count(a) == 1
s = s.replace(a, "        mask_t[:] = 0\n        cvis[:] = True\n")
open(p, 'w').write(s)
