p = 'attention_mla_amx16.py'; s = open(p).read()
a = '                pv16_2(ag + c * GROUP * 4, accs, vbp + c * TILE_BYTES, vbp + (c + 1) * TILE_BYTES)'
assert s.count(a) == 1; s = s.replace(a, '                pass'); open(p, 'w').write(s)
