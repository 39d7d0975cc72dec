# extra prefetch: flash_attn_mla(..., amx_cfg, xp, xlen): items prefetch a share of [xp, xp + xlen) spread over tiles
p = 'attention_mla_amx16.py'; s = open(p).read()
def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
rep("""c1, g0, cfgp):
    \"\"\"attention_mla_amx.mla_item_amx for an f16""", """c1, g0, cfgp, xp, xlen):
    \"\"\"attention_mla_amx.mla_item_amx for an f16""")
rep("""    tile_config(cfgp)
    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)
""", """    tile_config(cfgp)
    n_tiles = max(1, (c1 - c0 + TILE - 1) // TILE)
    xstep = (xlen // n_tiles + 63) // 64 * 64
    xo = np.int64(0)
    for cb in range(c0, c1, TILE):
        nc = min(TILE, c1 - cb)
        xe = min(xlen, xo + xstep)
        for o in range(xo, xe, 64):
            prefetch(xp + o)
        xo = xe
""")
rep("from .simd import _F16,", "from .simd import prefetch, _F16,")
open(p, 'w').write(s)
p = 'attention_mla.py'; s = open(p).read()
rep("""                   n_split, amx_cfg):
    \"\"\"Absorbed MLA attention of a ubatch""", """                   n_split, amx_cfg, xp=0, xlen=0):
    \"\"\"Absorbed MLA attention of a ubatch""")
rep("""            _amx16_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale / s16,
                        t0, t1, c0, c1, t0 * n_head // 16, cfgp)""", """            xs = xlen // (n_qt * n_split)
            _amx16_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale / s16,
                        t0, t1, c0, c1, t0 * n_head // 16, cfgp, np.int64(xp + it * xs), np.int64(xs))""")
rep("""def _no_amx_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0,
                 c1, g0, cfgp):""", """def _no_amx_item(acc, m, l, qp, n_head, k, kind, v_off, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale, t0, t1, c0,
                 c1, g0, cfgp, xp=0, xlen=0):""")
open(p, 'w').write(s)
