p = 'attention_mla_amx16.py'; s = open(p).read()
a = '                    qk16_step(rows[0] + o, krs, qb, qb + TILE_BYTES, rows[16] + o)'
assert s.count(a) == 1; s = s.replace(a, '                    pass'); open(p, 'w').write(s)
