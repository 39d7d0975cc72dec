# timing bound: softmax_t's probabilities without the exp polynomial (results wrong)
p = 'attention_mla_amx.py'; s = open(p).read()
a = '            pr = exp_neg_ir(builder, builder.fsub(ld(a), m_sub))'
assert s.count(a) == 1; s = s.replace(a, '            pr = builder.fsub(ld(a), m_sub)'); open(p, 'w').write(s)
