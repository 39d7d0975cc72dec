import os, sys
p = 'simd.py'; s = open(p).read()
a = 'PREFETCH_BYTES = 16384'; b = 'PREFETCH_LOCALITY = 2'
assert s.count(a) == 1 and s.count(b) == 1
s = s.replace(a, 'PREFETCH_BYTES = ' + os.environ['PFB']).replace(b, 'PREFETCH_LOCALITY = ' + os.environ.get('PFL', '2'))
open(p, 'w').write(s)
