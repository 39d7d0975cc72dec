p = 'attention_mla_amx16.py'; s = open(p).read()
for a in ['''    "tdpfp16ps %tmm3, %tmm4, %tmm0\\n\\t"
''', '''    "tdpfp16ps %tmm3, %tmm5, %tmm1\\n\\t"
''', '''    "tileloadd ($3,%r11,1), %tmm3\\n\\t"
''']:
    assert s.count(a) == 1, a; s = s.replace(a, '')
open(p, 'w').write(s)
