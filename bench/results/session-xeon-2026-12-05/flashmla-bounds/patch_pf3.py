p = 'attention_mla_amx.py'; s = open(p).read(); a = 'PF_TILES = 2'
assert s.count(a) == 1; s = s.replace(a, 'PF_TILES = 3'); open(p, 'w').write(s)
