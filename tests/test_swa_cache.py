"""Sliding-window layers with their own window-sized KV cache (Context.cache_swa, llama.cpp's iSWA cache)
against full-size caches (swa_full) on a tiny synthetic gemma3: logits over a prompt and a generation far
longer than the window, sizes, rollback (prefix reuse), several sequences, defrag, context shift and
state save/restore with both caches."""

import os

import numpy as np
import pytest

import gguf
from pyrt.errors import ContextOverflowError, StateError
from pyrt.io.gguf_file import GGUFFile
from pyrt.models import build_model
from pyrt.ops import paths
from pyrt.runtime.context import Batch, Context, swa_cache_size

N_SWA = 8
DIMS = dict(n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=128, n_layer=4, n_vocab=384, n_ctx=1024)


def write_gemma3(path, seed: int = 0, n_swa: int = N_SWA, pattern: int = 2, wtype: str = "F32", **dims) -> dict:
    """A tiny deterministic gemma3 GGUF (F32 or wtype layer matrices, tied F32 output, SPM toy vocabulary):
    layers with il % pattern < pattern - 1 use a sliding window of n_swa, the others attend globally."""
    import synthetic

    hp = dict(DIMS, **dims)
    rng = np.random.default_rng(seed)
    n_embd, hd, n_ff = hp["n_embd"], hp["head_dim"], hp["n_ff"]
    w = gguf.GGUFWriter(os.fspath(path), "gemma3")
    w.add_name("pyrt-synthetic-gemma3")
    w.add_block_count(hp["n_layer"])
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    w.add_rope_dimension_count(hd)
    w.add_uint32("gemma3.attention.sliding_window", n_swa)
    w.add_uint32("gemma3.attention.sliding_window_pattern", pattern)
    w.add_vocab_size(hp["n_vocab"])
    tokens, scores, types = synthetic.spm_vocab(hp["n_vocab"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def mat(n_out, n_in, std=0.08):
        return (rng.standard_normal((n_out, n_in)) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(hp["n_vocab"], n_embd, 0.05))
    add = w.add_tensor
    if wtype != "F32":
        qt = gguf.GGMLQuantizationType[wtype]

        def add(name, m):
            w.add_tensor(name, gguf.quants.quantize(m, qt), raw_dtype=qt)
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        add(p + "attn_q.weight", mat(hp["n_head"] * hd, n_embd, 0.3))
        add(p + "attn_k.weight", mat(hp["n_head_kv"] * hd, n_embd, 0.3))
        add(p + "attn_v.weight", mat(hp["n_head_kv"] * hd, n_embd))
        w.add_tensor(p + "attn_q_norm.weight", norm(hd))
        w.add_tensor(p + "attn_k_norm.weight", norm(hd))
        add(p + "attn_output.weight", mat(n_embd, hp["n_head"] * hd))
        w.add_tensor(p + "post_attention_norm.weight", norm(n_embd))
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        add(p + "ffn_gate.weight", mat(n_ff, n_embd))
        add(p + "ffn_up.weight", mat(n_ff, n_embd))
        add(p + "ffn_down.weight", mat(n_embd, n_ff))
        w.add_tensor(p + "post_ffw_norm.weight", norm(n_embd))
    w.add_tensor("output_norm.weight", norm(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hp


# Logits of the same tokens evaluated in other batch splits differ by rounding only: the kernels' reductions may
# reassociate, in an order that depends on the token count and the target (up to ~1e-8 with Zen 4 code; bit-equal
# with reassociation off), while one changed token in the context moves this model's logits by nmse > 1e-2.
ROUNDING_NMSE = 1e-7


@pytest.fixture(scope="module")
def gemma_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("swa") / "gemma3-tiny.gguf"
    write_gemma3(path)
    return str(path)


@pytest.fixture(scope="module")
def model(gemma_tiny):
    return build_model(GGUFFile(gemma_tiny))


@pytest.fixture
def no_pad():
    """Window caches of exactly min(n_ctx, n_swa * n_seq_max + n_ubatch) cells (llama.cpp pads to 256)."""
    with paths.using(swa_pad=1):
        yield


def make(model, swa_full=False, n_ctx=256, n_ubatch=16, n_batch=64, n_seq_max=1, **kw):
    return Context(model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, type_k="f32", type_v="f32",
                   n_seq_max=n_seq_max, swa_full=swa_full, **kw)


def run(ctx, toks, pos0=0, seq=0, logits="all"):
    out = []
    for s in range(0, len(toks), ctx.n_batch):
        out.append(ctx.decode(Batch.from_tokens(toks[s:s + ctx.n_batch], pos0=pos0 + s, seq_id=seq, logits=logits)))
    return np.concatenate(out)


def greedy(ctxs, logits, pos, n):
    """Feed the same greedy continuation (from ctxs[0]'s logits) to every context; returns per-step logits."""
    outs = [[] for _ in ctxs]
    tok = int(np.argmax(logits[0][-1]))
    for i in range(n):
        for c, o in zip(ctxs, outs):
            o.append(c.decode(Batch.from_tokens([tok], pos0=pos + i))[-1])
        tok = int(np.argmax(outs[0][-1]))
    return [np.array(o) for o in outs]


def nmse(a, b):
    return float(np.sum((a.astype(np.float64) - b) ** 2) / np.sum(b.astype(np.float64) ** 2))


def cache_snapshot(ctx):
    snap = []
    for c in ctx.caches:
        snap.append([a.copy() for a in c.cells.get_state()] + [b.copy() for b in c.k + c.v if b is not None])
    return snap


def same_snapshot(a, b):
    return len(a) == len(b) and all(len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
                                    for x, y in zip(a, b))


def test_sizes_and_memory_report(model):
    assert model.n_swa == N_SWA and model.is_swa == [True, False, True, False]
    ctx = make(model, n_ctx=512)
    assert ctx.cache_swa is not None and ctx.cache_swa.size == 256 == swa_cache_size(512, N_SWA, 1, 16)
    assert ctx.cache.size == 512 and ctx.cache.n_layer == 2 and ctx.cache_swa.n_layer == 2
    assert [ctx.layer_cache(il) for il in range(4)] == [(ctx.cache_swa, 0), (ctx.cache, 0), (ctx.cache_swa, 1),
                                                          (ctx.cache, 1)]
    rep = ctx.memory_report().splitlines()
    total = sum(c.total_bytes() for c in ctx.caches) / 2**20
    assert rep[0].startswith(f"KV self size  = {total:7.2f} MiB") and "SWA KV cache" in rep[2]
    assert "  256 cells" in rep[2] and "  512 cells" in rep[1]
    # padding to 256 would make the window cache as big as the context: one cache, as before
    small = make(model, n_ctx=256)
    assert small.cache_swa is None and small.cache.n_layer == 4 and small.n_ctx_swa == 256
    full = make(model, n_ctx=512, swa_full=True)
    assert full.cache_swa is None and full.cache.n_layer == 4
    assert full.cache.total_bytes() == 2 * ctx.cache.total_bytes()
    for n_seq_max, n_ubatch in ((1, 16), (3, 16), (2, 5)):
        with paths.using(swa_pad=1):
            c = make(model, n_ctx=200, n_seq_max=n_seq_max, n_ubatch=n_ubatch)
        assert c.cache_swa.size == N_SWA * n_seq_max + n_ubatch
        assert c.cache_swa.total_bytes() * 200 == c.cache.total_bytes() * c.cache_swa.size


def test_logits_match_full_caches_far_past_the_window(model, no_pad):
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, 384, 70).tolist()  # 5 ubatches of 16 in 2 batches
    full, win = make(model, swa_full=True), make(model)
    assert win.cache_swa.size == N_SWA + 16
    lf, lw = run(full, prompt), run(win, prompt)
    assert np.array_equal(lw, lf)
    gf, gw = greedy([win, full], [lw], len(prompt), 60)[::-1]
    assert np.array_equal(gw, gf)  # one token per ubatch: same cells, same scan order, bit for bit
    assert win.cells_swa.used <= win.cache_swa.size and win.cells.used == len(prompt) + 60


def test_rollback_past_the_window_reevaluates(model, no_pad):
    rng = np.random.default_rng(2)
    toks = rng.integers(3, 384, 60).tolist()
    full, win = make(model, swa_full=True), make(model)
    run(full, toks, logits="none")
    run(win, toks, logits="none")
    assert full.seq_resume_pos(0, 30) == 30
    assert win.seq_resume_pos(0, 60) == 60 and win.seq_resume_pos(0, 59) == 59  # last token again: fine
    q = win.seq_resume_pos(0, 30)
    assert q == 0  # the window before 30 was pruned
    # decoding at 30 anyway would use an incomplete window: the logits differ
    new = rng.integers(3, 384, 10).tolist()
    bad = make(model)
    run(bad, toks, logits="none")
    bad.seq_rm(0, 30, -1)
    full.seq_rm(0, 30, -1)
    ref = run(full, new, pos0=30)
    assert not np.allclose(run(bad, new, pos0=30), ref, atol=1e-4)
    win.seq_rm(0, q, -1)
    got = run(win, toks[q:30] + new, pos0=q)[30 - q:]
    assert nmse(got, ref) < ROUNDING_NMSE  # other batch splits than the reference: matmul rounding only


def test_llm_prefix_reuse_after_rollback(gemma_tiny, no_pad):
    from pyrt.runtime.llm import LLM

    kw = dict(n_ctx=128, n_batch=32, n_ubatch=16, warmup=False, type_k="f32", type_v="f32")
    full, win = LLM(gemma_tiny, swa_full=True, **kw), LLM(gemma_tiny, **kw)
    assert win.ctx.cache_swa is not None
    rng = np.random.default_rng(3)
    a = [1] + rng.integers(3, 384, 30).tolist()
    b = a[:20] + rng.integers(3, 384, 12).tolist()
    c = None
    for prompt in (a, b, a, "ext"):
        if prompt == "ext":  # extends what the cache holds: nothing to re-evaluate
            prompt = c + [5, 6, 7]
        outs = [list(m.generate_ids(prompt, max_tokens=25, temperature=0.0, ignore_eos=True)) for m in (full, win)]
        assert outs[0] == outs[1]
        c = prompt + outs[0][:-1]  # the last yielded token is not in the cache
        assert win._tokens == full._tokens == c
    n_before = win.ctx.timings.n_p_eval
    win._ingest(c + [9])
    assert win.ctx.timings.n_p_eval == n_before  # only one token decoded (counted as generation)


def test_several_sequences(model, no_pad):
    rng = np.random.default_rng(4)
    ctxs = [make(model, swa_full=True, n_seq_max=3), make(model, n_seq_max=3)]
    assert ctxs[1].cache_swa.size == 3 * N_SWA + 16
    prompts = [rng.integers(3, 384, n).tolist() for n in (20, 33, 9)]
    outs = [[], []]
    for c, o in zip(ctxs, outs):
        tok = np.concatenate(prompts)
        seq = np.concatenate([np.full(len(p), s) for s, p in enumerate(prompts)])
        pos = np.concatenate([np.arange(len(p)) for p in prompts])
        o.append(c.decode(Batch(tok, pos, seq, np.ones(len(tok), bool))))
    n_pos = [len(p) for p in prompts]
    for step in range(40):
        if step == 10:  # seq 2 becomes a copy of seq 0
            for c in ctxs:
                c.seq_rm(2)
                c.seq_cp(0, 2)
            n_pos[2] = n_pos[0]
        tok = np.array([(7 * step + 3 * s) % 380 + 3 for s in range(3)])
        for c, o in zip(ctxs, outs):
            o.append(c.decode(Batch(tok, np.array(n_pos), np.arange(3), np.ones(3, bool))))
        n_pos = [p + 1 for p in n_pos]
    for a, b in zip(*outs):
        assert np.array_equal(b, a)  # the same cells scanned in the same order
    assert ctxs[1].cells_swa.used <= ctxs[1].cache_swa.size


def test_defrag_and_state_with_both_caches(model, no_pad):
    rng = np.random.default_rng(5)
    toks = rng.integers(3, 384, 40).tolist()
    win, twin = make(model, n_seq_max=2), make(model, n_seq_max=2)
    for c in (win, twin):
        run(c, toks, seq=0, logits="none")
        run(c, toks[:25], seq=1, logits="none")
        c.seq_rm(1)
    assert win.defrag() > 0
    assert win.cells.n_kv() == win.cells.used and win.cells_swa.n_kv() == win.cells_swa.used
    data = win.save_state(toks)
    more = rng.integers(3, 384, 20).tolist()
    ref = run(twin, more, pos0=40)
    assert np.array_equal(run(win, more, pos0=40), ref)
    assert win.load_state(data) == toks
    assert np.array_equal(run(win, more, pos0=40), ref)
    # one sequence into another slot of a fresh context
    seq_data = twin.save_state(seq_id=0)
    other = make(model, n_seq_max=2)
    other.load_state(seq_data, seq_id=1)
    nxt = rng.integers(3, 384, 5).tolist()
    assert np.array_equal(run(other, nxt, pos0=60, seq=1), run(twin, nxt, pos0=60, seq=0))


def test_bad_states_leave_both_caches_untouched(model, no_pad, tmp_path):
    rng = np.random.default_rng(6)
    win = make(model)
    run(win, rng.integers(3, 384, 30).tolist(), logits="none")
    good = win.save_state([1, 2, 3])
    other = make(model)
    run(other, rng.integers(3, 384, 50).tolist(), logits="none")
    before = cache_snapshot(other)
    n1 = len(good) - (len(good) - good.index(b"PYKV", 4))  # start of the window record
    bad = [good[:-3], good[:n1], good[:n1 + 40] + bytes([good[n1 + 40] ^ 1]) + good[n1 + 41:],
           good[:-1] + bytes([good[-1] ^ 0x80]), b"junk" * 20]
    for data in bad:
        with pytest.raises(StateError):
            other.load_state(data)
        assert same_snapshot(cache_snapshot(other), before)
    with pytest.raises(StateError, match="swa"):
        make(model, swa_full=True).load_state(good)
    with pytest.raises(StateError, match="swa"):
        other.load_state(make(model, swa_full=True).save_state())
    with pytest.raises(StateError):
        other.load_file(tmp_path / "missing.bin")
    assert same_snapshot(cache_snapshot(other), before)
    other.load_state(good)
    assert not same_snapshot(cache_snapshot(other), before)


def test_out_of_order_batch_that_does_not_fit_the_window_cache(model, no_pad):
    win = make(model)
    run(win, list(range(3, 43)), logits="none")
    before = cache_snapshot(win)
    # positions already passed, without removing them first: nothing can be pruned for them
    with pytest.raises(ContextOverflowError, match="sliding-window"):
        win.decode(Batch.from_tokens(list(range(3, 19)), pos0=1, seq_id=0))
    assert same_snapshot(cache_snapshot(win), before)


def test_context_shift_with_both_caches(gemma_tiny, no_pad):
    from pyrt.runtime.llm import LLM

    kw = dict(n_ctx=64, n_batch=32, n_ubatch=16, warmup=False)
    full, win = LLM(gemma_tiny, swa_full=True, **kw), LLM(gemma_tiny, **kw)
    assert win.ctx.cache_swa.size == N_SWA + 16
    prompt = [1] + list(range(10, 30))
    outs = [list(m.generate_ids(prompt, max_tokens=150, temperature=0.0, ignore_eos=True, context_shift=True,
                                n_keep=4)) for m in (full, win)]
    assert len(outs[0]) == 150 and outs[0] == outs[1]


def test_resume_anywhere_inside_a_prompt_shorter_than_the_window(model, no_pad):
    """Positions below 0 do not exist: a cached prompt of up to n_swa tokens resumes at any position."""
    for n in (3, N_SWA - 1, N_SWA, N_SWA + 1):
        win = make(model)
        run(win, list(range(3, 3 + n)), logits="none")
        assert [win.seq_resume_pos(0, q) for q in range(n + 1)] == list(range(n + 1)), n


@pytest.mark.parametrize("n", [5, N_SWA, N_SWA + 1, 30, 60])
def test_rerun_and_next_turn_evaluate_only_what_is_new(gemma_tiny, no_pad, n):
    """Prompts shorter than, equal to and longer than the window (30 and 60 prune the window cache while
    they are evaluated): the same prompt again decodes only its last token, an extended one only the
    extension, a prompt cache file only the last token, and the logits equal a fresh evaluation."""
    from pyrt.runtime.llm import LLM

    kw = dict(n_ctx=128, n_batch=32, n_ubatch=16, warmup=False, type_k="f32", type_v="f32")
    win, fresh = LLM(gemma_tiny, **kw), LLM(gemma_tiny, **kw)
    assert win.ctx.cache_swa is not None and win.ctx.cache_swa.size == N_SWA + 16
    rng = np.random.default_rng(10 + n)
    ids = [1] + rng.integers(3, 384, n - 1).tolist()
    more = rng.integers(3, 384, 6).tolist()

    def ref(toks):
        return fresh.eval_logits(toks)[-1]

    first = win._ingest(ids)
    assert win.ctx.timings.n_p_eval == n and np.array_equal(first, ref(ids))
    t = win.ctx.timings
    again = win._ingest(ids)
    assert (t.n_p_eval, t.n_eval) == (n, 1)  # the last token, decoded alone
    assert nmse(again, first) < ROUNDING_NMSE  # decoded alone instead of in a batch: rounding only
    ext = win._ingest(ids + more)
    assert (t.n_p_eval, t.n_eval) == (n + len(more), 1)
    assert nmse(ext, ref(ids + more)) < ROUNDING_NMSE  # other batch splits than the reference: rounding only
    # the same through a state: a fresh context that loads it decodes the last token only
    state = win.save_state()
    other = LLM(gemma_tiny, **kw)
    other.load_state(state)
    got = other._ingest(ids + more)
    assert (other.ctx.timings.n_p_eval, other.ctx.timings.n_eval) == (0, 1)
    assert nmse(got, ref(ids + more)) < ROUNDING_NMSE


@pytest.mark.parametrize("per_seq", [False, True])
def test_server_window_cache_keeps_finished_prompts(gemma_tiny, no_pad, per_seq):
    """swa_per_seq (pyrt serve): (n_swa + n_ubatch) window cells per sequence, as llama-server's slots have,
    so that a finished request's prompt is still whole when the next request with its prefix arrives. With
    llama.cpp's unified size (n_swa * n_seq_max + n_ubatch), the idle slot's cells and the generating
    sequence leave too few cells, the window is pruned and the shared prefix is evaluated again."""
    from pyrt.engine import Engine, GenerationParams, Request
    from pyrt.runtime.llm import LLM

    llm = LLM(gemma_tiny, n_ctx=256, n_seq_max=2, n_ubatch=16, n_threads=1, swa_per_seq=per_seq)
    assert llm.ctx.cache_swa.size == (48 if per_seq else 32)
    ref = LLM(gemma_tiny, n_ctx=256, n_ubatch=16, n_threads=1)
    rng = np.random.default_rng(21)
    system = rng.integers(3, 384, 12).tolist()
    r1 = rng.integers(3, 384, 10).tolist()
    r2 = system + rng.integers(3, 384, 3).tolist()
    r3 = system + rng.integers(3, 384, 4).tolist()
    eng = Engine(llm, 2).start()
    try:
        def gen(p, n):
            return eng.submit(Request(p, GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True))).result()
        gen(r1, 2)   # an idle slot holds 12 cells
        gen(r2, 12)  # 27 cells: more than the unified window cache has left
        c3 = gen(r3, 4)
    finally:
        eng.stop()
    ref.reset()
    assert [t.id for t in c3.tokens] == list(ref.generate_ids(r3, max_tokens=4, temperature=0.0, ignore_eos=True))
    if per_seq:
        assert c3.cache_n == len(system) and c3.prompt_n == len(r3) - len(system)
    else:
        assert c3.cache_n < len(system)
