p = 'attention_mla_amx.py'; s = open(p).read()
a = '''        for o in range(0, row_bytes, 64):
            prefetch(ra + o)'''
assert s.count(a) == 1; s = s.replace(a, a.replace('64', '128')); open(p, 'w').write(s)
