p = 'simd.py'; s = open(p).read(); a = 'PREFETCH_LOCALITY = 2'
assert s.count(a) == 1; s = s.replace(a, 'PREFETCH_LOCALITY = 0'); open(p, 'w').write(s)
