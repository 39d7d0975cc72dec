p = 'attention_mla_amx16.py'; s = open(p).read()
a = "prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, kb, n_parts, row_bytes)"
assert s.count(a) == 1; s = s.replace(a, "pass")
a = "prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + c // 2, n_parts, row_bytes)"
assert s.count(a) == 1; s = s.replace(a, "pass")
open(p, 'w').write(s)
