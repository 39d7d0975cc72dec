"""The AMX-FP16 decode item in 64-cell steps (four score tiles, Q's two tiles loaded once for four products, one
accumulator round trip and one softmax per 64 cells): not kept (in the model at 4096 cells 558 -> 632 us a layer;
in L3, one thread, 2048-cell items 209 -> 218 us). Run in a copy of pyrt/_kernels (../flashmla-bounds/mk.sh)."""

def rep(s, a, b):
    assert s.count(a) == 1, a
    return s.replace(a, b)

p = 'attention_mla_amx.py'; s = open(p).read()
s = rep(s, '''def _softmax_t_codegen(context, builder, signature, args):''',
        '''def _softmax_t_codegen(context, builder, signature, args, width=TILE):''')
s = rep(s, '''        with cgutils.for_range(builder, builder.sub(i64(TILE), nc)) as lj:''',
        '''        with cgutils.for_range(builder, builder.sub(i64(width), nc)) as lj:''')
s += '''

def make_softmax_t(width):
    def softmax_t(typingctx, stp, sts, R, nc, maskp, nt, n_head, scale, mp, lp, accp, accs, dv):
        i = types.int64
        return (types.none(i, i, i, i, i, i, i, types.float32, i, i, i, i, i),
                lambda context, builder, signature, args: _softmax_t_codegen(context, builder, signature, args, width))
    softmax_t.__name__ = softmax_t.__qualname__ = f"softmax_t{width}"
    return intrinsic(softmax_t)
'''
open(p, 'w').write(s)

p = 'attention_mla_amx16.py'; s = open(p).read()
s = rep(s, "prefetch_rows_part, softmax_t,", "prefetch_rows_part, softmax_t, make_softmax_t, load_p4,")
s = rep(s, "_W = 16\n", '''_W = 16
STEP = 2 * TILE
softmax_t64 = make_softmax_t(STEP)
zero4 = intrinsic(_asm_call("tilezero %tmm0\\n\\ttilezero %tmm1\\n\\ttilezero %tmm2\\n\\ttilezero %tmm3", 0))
qk16_step4 = intrinsic(_asm_call(
    "mov $$64, %r11\\n\\t"
    "tileloadd ($3,%r11,1), %tmm5\\n\\t"
    "tileloadd ($0,$1,1), %tmm6\\n\\t"
    "tileloadd ($4,$1,1), %tmm7\\n\\t"
    "tdpfp16ps %tmm5, %tmm6, %tmm0\\n\\t"
    "tdpfp16ps %tmm5, %tmm7, %tmm1\\n\\t"
    "tileloadd ($2,%r11,1), %tmm4\\n\\t"
    "tdpfp16ps %tmm4, %tmm6, %tmm0\\n\\t"
    "tdpfp16ps %tmm4, %tmm7, %tmm1\\n\\t"
    "tileloadd ($5,$1,1), %tmm6\\n\\t"
    "tileloadd ($6,$1,1), %tmm7\\n\\t"
    "tdpfp16ps %tmm5, %tmm6, %tmm2\\n\\t"
    "tdpfp16ps %tmm5, %tmm7, %tmm3\\n\\t"
    "tdpfp16ps %tmm4, %tmm6, %tmm2\\n\\t"
    "tdpfp16ps %tmm4, %tmm7, %tmm3", 7))
store23 = intrinsic(_asm_call("tilestored %tmm2, ($0,$1,1)\\n\\ttilestored %tmm3, ($2,$1,1)", 3))
pv16_4 = intrinsic(_asm_call(
    "mov $$64, %r11\\n\\t"
    "tileloadd ($0,$1,1), %tmm0\\n\\t"
    "tileloadd ($2,%r11,1), %tmm6\\n\\t"
    "lea 64($0), %r11\\n\\t"
    "tileloadd (%r11,$1,1), %tmm1\\n\\t"
    "mov $$64, %r11\\n\\t"
    "tileloadd ($3,%r11,1), %tmm7\\n\\t"
    "tdpfp16ps %tmm6, %tmm2, %tmm0\\n\\t"
    "tdpfp16ps %tmm6, %tmm3, %tmm0\\n\\t"
    "tdpfp16ps %tmm7, %tmm2, %tmm1\\n\\t"
    "tdpfp16ps %tmm7, %tmm3, %tmm1\\n\\t"
    "tileloadd ($4,%r11,1), %tmm6\\n\\t"
    "tileloadd ($5,%r11,1), %tmm7\\n\\t"
    "tdpfp16ps %tmm6, %tmm4, %tmm0\\n\\t"
    "tdpfp16ps %tmm6, %tmm5, %tmm0\\n\\t"
    "tdpfp16ps %tmm7, %tmm4, %tmm1\\n\\t"
    "tdpfp16ps %tmm7, %tmm5, %tmm1\\n\\t"
    "tilestored %tmm0, ($0,$1,1)\\n\\t"
    "lea 64($0), %r11\\n\\t"
    "tilestored %tmm1, (%r11,$1,1)", 6))
''')
i0 = s.index("    vb = empty_lined(dv // GROUP * TILE_BYTES // 2, np.uint16)")
i1 = s.index("    tile_release()\n    inv = np.float32(1.0) / P_SCALE")
s = s[:i0] + '''    nvt = dv // GROUP
    vb = empty_lined(nvt * TILE_BYTES, np.uint16)
    kbuf = empty_lined(STEP * KB, np.uint16)
    zrow = zeros_lined(k.shape[1], np.uint16)
    st = empty_lined(STEP * R, np.float32).reshape((STEP, R))
    pt = empty_lined(2 * TILE_BYTES, np.uint16)
    mask_t = np.empty((STEP, nt), dtype=np.float32)
    cvis, cpos, cseq = cell_scratch(STEP)
    qseq = query_seqs(q_seq, t0, t1)
    start_rows(acc, m, l)
    rows = np.empty(STEP, np.int64)
    qpp = np.int64(qp.ctypes.data)
    stp, sts = np.int64(st.ctypes.data), np.int64(R * 4)
    vbp, ptp, kbp = np.int64(vb.ctypes.data), np.int64(pt.ctypes.data), np.int64(kbuf.ctypes.data)
    vh = np.int64(nvt * TILE_BYTES)
    accp, accs = np.int64(acc.ctypes.data), np.int64(acc.strides[0])
    mkp, mp, lp = np.int64(mask_t.ctypes.data), np.int64(m.ctypes.data), np.int64(l.ctypes.data)
    kp, krs = np.int64(k.ctypes.data), np.int64(k.strides[0])
    zp = np.int64(zrow.ctypes.data)
    row_bytes = np.int64(k.shape[1]) * np.int64(2)
    kb0 = v_off // KB
    n_parts = nkb + nvt // 2 + 2
    tile_config(cfgp)
    for cb in range(c0, c1, STEP):
        nc = min(STEP, c1 - cb)
        if not tile_mask_t(mask_t, cvis, cpos, cseq, kv_idx, cb, nc, cell_pos, cell_seq, q_pos, qseq, t0, 0):
            continue
        direct = nc == STEP
        for j in range(STEP):
            rows[j] = kp + np.int64(kv_idx[cb + j]) * krs if j < nc and cvis[j] else zp
            direct = direct and rows[j] == rows[0] + j * krs
        pf_c = cb + STEP
        n_pf = max(0, min(STEP, kv_idx.shape[0] - pf_c))
        for g in range(G):
            zero4()
            qg = qpp + (g0 + g) * nkb * 2 * TILE_BYTES
            for kb in range(nkb):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, kb, n_parts, row_bytes)
                o = np.int64(kb * KB * 2)
                qb = qg + kb * 2 * TILE_BYTES
                if direct:
                    qk16_step4(rows[0] + o, krs, qb, qb + TILE_BYTES, rows[16] + o, rows[32] + o, rows[48] + o)
                else:
                    for j in range(STEP):
                        bf16_row32(kbp + j * 64, 0, rows[j] + o)
                    qk16_step4(kbp, 64, qb, qb + TILE_BYTES, kbp + 16 * 64, kbp + 32 * 64, kbp + 48 * 64)
                if g == 0 and kb >= kb0 and kb < kb0 + dv // KB:
                    d = vbp + (kb - kb0) * 2 * TILE_BYTES
                    for i in range(GROUP):
                        pairs16(d + i * 64, rows[2 * i] + o, rows[2 * i + 1] + o)
                        pairs16(d + vh + i * 64, rows[TILE + 2 * i] + o, rows[TILE + 2 * i + 1] + o)
            sg = stp + g * GROUP * 4
            store2(sg, sts, sg + 16 * sts)
            store23(sg + 32 * sts, sts, sg + 48 * sts)
        prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, n_parts - 2, n_parts, row_bytes)
        softmax_t64(stp, sts, R, nc, mkp, nt, n_head, scale, mp, lp, accp, accs, dv)
        prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, n_parts - 1, n_parts, row_bytes)
        for g in range(G):
            sg = stp + g * GROUP * 4
            p16(ptp, sg, sts)
            p16(ptp + 2 * TILE_BYTES, sg + TILE * sts, sts)
            load_p4(ptp, ptp + TILE_BYTES, ptp + 2 * TILE_BYTES, ptp + 3 * TILE_BYTES)
            ag = accp + g * GROUP * accs
            for c in range(0, nvt, 2):
                if g == 0:
                    prefetch_rows_part(kp, krs, kv_idx, pf_c, n_pf, nkb + c // 2, n_parts, row_bytes)
                b = vbp + c * TILE_BYTES
                pv16_4(ag + c * GROUP * 4, accs, b, b + TILE_BYTES, b + vh, b + vh + TILE_BYTES)
''' + s[i1:]
open(p, 'w').write(s)
