p = 'attention_mla_amx16.py'; s = open(p).read()
for a in ['''    "tdpfp16ps %tmm6, %tmm3, %tmm0\\n\\t"
''', '''    "tdpfp16ps %tmm7, %tmm3, %tmm1\\n\\t"
''']:
    assert s.count(a) == 1, a; s = s.replace(a, '')
open(p, 'w').write(s)
