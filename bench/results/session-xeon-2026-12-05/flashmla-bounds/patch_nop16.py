p = 'attention_mla_amx16.py'; s = open(p).read()
a = "            p16(ptp, stp + g * GROUP * 4, sts)\n"
assert s.count(a) == 1
s = s.replace(a, "")
open(p, 'w').write(s)
