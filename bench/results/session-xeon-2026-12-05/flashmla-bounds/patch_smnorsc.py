# timing bound: softmax_t without the accumulators' rescale (results wrong)
p = 'attention_mla_amx.py'; s = open(p).read()
a = '            with builder.if_then(moved, likely=False):'
assert s.count(a) == 1; s = s.replace(a, '            with builder.if_then(builder.and_(moved, ir.Constant(ir.IntType(1), 0)), likely=False):'); open(p, 'w').write(s)
