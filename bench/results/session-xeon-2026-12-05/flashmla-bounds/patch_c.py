p = 'attention_mla_amx16.py'
s = open(p).read()
def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
rep("""    vb = empty_lined(dv // GROUP * TILE_BYTES // 2, np.uint16)  # the tile's value tiles (each tile writes all)
""", """    vb = empty_lined(2 * TILE_BYTES, np.uint16)   # two value blocks' value tiles, built as the value steps go
""")
rep("""    pt = empty_lined(TILE_BYTES, np.uint16)       # one group's P terms as A tiles (hi, lo)
""", """    pt = empty_lined(G * TILE_BYTES, np.uint16)   # every group's P terms as A tiles (hi, lo)
""")
rep("""                if g == 0 and kb >= kb0 and kb < kb0 + dv // KB:  # this block's values as value tiles
                    d = vbp + (kb - kb0) * 2 * TILE_BYTES
                    for i in range(GROUP):
                        pairs16(d + i * 64, rows[2 * i] + o, rows[2 * i + 1] + o)
""", "")
rep("""        for g in range(G):
            p16(ptp, stp + g * GROUP * 4, sts)
            load_p2(ptp, ptp + TILE_BYTES)
            ag = accp + g * GROUP * accs
            for c in range(0, dv // GROUP, 2):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + c // 2, n_parts, row_bytes)
                pv16_2(ag + c * GROUP * 4, accs, vbp + c * TILE_BYTES, vbp + (c + 1) * TILE_BYTES)
""", """        for g in range(G):
            p16(ptp + g * 2 * TILE_BYTES, stp + g * GROUP * 4, sts)
        if G == 1:
            load_p2(ptp, ptp + TILE_BYTES)
        for b in range(dv // KB):  # value block b: its value tiles from the cells' rows, then every group's step
            prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + b, n_parts, row_bytes)
            d = vbp + (b & 1) * 2 * TILE_BYTES
            o = np.int64((kb0 + b) * KB * 2)
            for i in range(GROUP):
                pairs16(d + i * 64, rows[2 * i] + o, rows[2 * i + 1] + o)
            for g in range(G):
                if G > 1:
                    gp = ptp + g * 2 * TILE_BYTES
                    load_p2(gp, gp + TILE_BYTES)
                pv16_2(accp + g * GROUP * accs + b * 2 * GROUP * 4, accs, d, d + TILE_BYTES)
""")
rep("""    n_parts = nkb + dv // (2 * GROUP)  # a tile's score steps and value steps""", """    n_parts = nkb + dv // KB  # a tile's score steps and value steps""")
open(p, 'w').write(s)
