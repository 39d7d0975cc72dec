p = 'fused_mla.py'; s = open(p).read()
a = "    if n_split == 1 and n_head % HEAD_GROUP == 0:"
assert s.count(a) == 1
s = s.replace(a, "    if False:")
a = """    flash_attn_mla(o_lat, qa, k, kind, n_rot, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, 1, kv_tile, n_split,
                   amx_cfg)"""
assert s.count(a) == 1
s = s.replace(a, """    flash_attn_mla(o_lat, qa, k, kind, n_rot, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, 1, kv_tile, n_split,
                   amx_cfg if n_split > 1 else amx_cfg[:0])""")
open(p, 'w').write(s)
