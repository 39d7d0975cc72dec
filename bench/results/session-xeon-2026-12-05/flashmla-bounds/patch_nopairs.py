p = 'attention_mla_amx16.py'; s = open(p).read()
a = '                        pairs16(d + i * 64, rows[2 * i] + o, rows[2 * i + 1] + o)'
assert s.count(a) == 1; s = s.replace(a, '                        pass'); open(p, 'w').write(s)
