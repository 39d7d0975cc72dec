# measurement: mla_decode with at most 4 KV splits (thread-count independent still, but not the model's rule)
p = 'fused_mla.py'; s = open(p).read()
a = '''    n_head, dn = q_nope.shape
    n_rot = q_pe.shape[1]'''
assert s.count(a) == 1; s = s.replace(a, '''    n_split = min(n_split, 4)
''' + a); open(p, 'w').write(s)
