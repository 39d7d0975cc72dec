p = 'attention_mla_amx16.py'; s = open(p).read()
a = '        softmax_t(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)'
assert s.count(a) == 1; s = s.replace(a, '        pass'); open(p, 'w').write(s)
