p = 'attention_mla_amx16.py'; s = open(p).read()
for a in ['''    "tileloadd ($0,$1,1), %tmm0\\n\\t"
''', '''    "tileloadd (%r11,$1,1), %tmm1\\n\\t"
''', '''    "tilestored %tmm0, ($0,$1,1)\\n\\t"
''']:
    assert s.count(a) == 1, a; s = s.replace(a, '')
a = '''    "tilestored %tmm1, (%r11,$1,1)", 4))'''
assert s.count(a) == 1; s = s.replace(a, '''    "nop", 4))''')
open(p, 'w').write(s)
