"""The serving engine without HTTP: mixed-sequence batches, concurrent == sequential, prefix reuse, stop
strings, cancellation, eviction, slot save/restore. The oracle for generated tokens is LLM.generate_ids
(one sequence, no engine)."""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest

import synthetic
import synthetic_deepseek2 as sd
from pyrt.engine import Engine, GenerationParams, Request
from pyrt.engine.requests import Completion, Piece, TextStream
from pyrt.errors import StateError
from pyrt.runtime.context import Batch
from pyrt.runtime.llm import LLM

N_GEN = 12


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine_models")
    llama = os.path.join(d, "llama-q4_k.gguf")
    synthetic.write_model(llama, "llama", "Q4_K")
    ds2 = os.path.join(d, "ds2.gguf")
    sd.write_model(ds2, "Q8_0", "k_b")
    return {"llama": llama, "ds2": ds2}


_LLMS: dict = {}


def get_llm(path, n_seq_max, n_ctx=1024, **kw):
    key = (path, n_seq_max, n_ctx, tuple(sorted(kw.items())))
    if key not in _LLMS:
        _LLMS[key] = LLM(path, n_ctx=n_ctx, n_seq_max=n_seq_max, n_threads=1, **kw)
    return _LLMS[key]


def prompts(n, seed=0, vocab=512):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, int(rng.integers(3, 40))).tolist() for _ in range(n)]


def reference(path, prompt, n_gen=N_GEN, **sampling):
    llm = get_llm(path, 1)
    llm.reset()
    kw = dict(temperature=0.0, ignore_eos=True)
    kw.update(sampling)
    return list(llm.generate_ids(prompt, max_tokens=n_gen, **kw))


def greedy(n=N_GEN, **kw):
    return GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def ids(c: Completion) -> list[int]:
    return [t.id for t in c.tokens]


@pytest.fixture
def engine_factory():
    made = []

    def make(path, n_parallel, n_ctx=1024, **kw):
        e = Engine(get_llm(path, n_parallel, n_ctx, **kw), n_parallel).start()
        made.append(e)
        return e
    yield make
    for e in made:
        e.stop()


def test_mixed_sequence_batch_matches_one_at_a_time(model_paths):
    """One decode over three sequences gives each sequence's logits as decoding it alone does."""
    ctx = get_llm(model_paths["llama"], 4).ctx
    ps = prompts(3, seed=1)
    ctx.clear()
    alone = []
    for i, p in enumerate(ps):
        alone.append(ctx.decode(Batch.from_tokens(p, 0, i))[-1])
    step_alone = [ctx.decode(Batch.from_tokens([7 + i], len(p), i))[-1] for i, p in enumerate(ps)]
    ctx.clear()
    tok = np.concatenate([np.asarray(p) for p in ps])
    pos = np.concatenate([np.arange(len(p)) for p in ps])
    seq = np.concatenate([np.full(len(p), i) for i, p in enumerate(ps)])
    want = np.zeros(len(tok), bool)
    want[np.cumsum([len(p) for p in ps]) - 1] = True
    mixed = ctx.decode(Batch(tok, pos, seq, want))
    step_mixed = ctx.decode(Batch(np.array([7, 8, 9]), np.array([len(p) for p in ps]), np.arange(3),
                                  np.ones(3, bool)))
    ctx.clear()
    for i in range(3):
        np.testing.assert_allclose(mixed[i], alone[i], atol=1e-4, rtol=0)
        np.testing.assert_allclose(step_mixed[i], step_alone[i], atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_parallel", [1, 2, 4])
@pytest.mark.parametrize("n_req", [1, 2, 4, 8])
def test_concurrent_equals_sequential(model_paths, engine_factory, n_parallel, n_req):
    path = model_paths["llama"]
    ps = prompts(n_req, seed=n_req)
    eng = engine_factory(path, n_parallel)
    reqs = [eng.submit(Request(p, greedy())) for p in ps]
    got = [r.result() for r in reqs]
    for p, c in zip(ps, got):
        assert c.finish_reason == "length"
        assert ids(c) == reference(path, p)
        assert c.predicted_n == N_GEN and c.prompt_n + c.cache_n == len(p)
    if n_parallel > 1 and n_req > 1:
        assert eng.max_seqs_in_step >= 2  # the requests really shared decode steps


def test_seeded_sampling_concurrent_equals_sequential(model_paths, engine_factory):
    path = model_paths["llama"]
    ps = prompts(4, seed=11)
    params = [GenerationParams(max_tokens=N_GEN, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=100 + i,
                               ignore_eos=True) for i in range(4)]
    eng = engine_factory(path, 4)
    got = [r.result() for r in [eng.submit(Request(p, q)) for p, q in zip(ps, params)]]
    for p, q, c in zip(ps, params, got):
        assert ids(c) == reference(path, p, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=q.seed)


def test_deepseek2_concurrent_equals_sequential(model_paths, engine_factory):
    path = model_paths["ds2"]
    ps = prompts(4, seed=5)
    eng = engine_factory(path, 4)
    got = [r.result() for r in [eng.submit(Request(p, greedy())) for p in ps]]
    for p, c in zip(ps, got):
        assert ids(c) == reference(path, p)
    assert eng.max_seqs_in_step >= 2


def _wait_first_piece(req: Request) -> None:
    for ev in req.events():
        if isinstance(ev, Piece) or isinstance(ev, Completion):
            return


@pytest.mark.parametrize("arch", ["llama", "ds2"])
def test_shared_prefix_is_reused(model_paths, engine_factory, arch):
    path = model_paths[arch]
    rng = np.random.default_rng(3)
    system = rng.integers(1, 512, 60).tolist()
    a = system + rng.integers(1, 512, 5).tolist()
    b = system + rng.integers(1, 512, 7).tolist()
    eng = engine_factory(path, 2)
    ca = eng.generate(a, greedy())
    assert ca.cache_n == 0 and ca.prompt_n == len(a)
    cb = eng.generate(b, greedy())
    assert cb.cache_n == len(system) and cb.prompt_n == len(b) - len(system)
    assert ids(cb) == reference(path, b)
    # the same prompt again: everything but the last token comes from the cache
    ca2 = eng.generate(a, greedy())
    assert ca2.cache_n == len(a) - 1 and ca2.prompt_n == 1
    assert ids(ca2) == ids(ca)


@pytest.mark.parametrize("arch", ["llama", "ds2"])
def test_prefix_copied_from_a_busy_sequence(model_paths, engine_factory, arch):
    path = model_paths[arch]
    rng = np.random.default_rng(4)
    system = rng.integers(1, 512, 50).tolist()
    a = system + rng.integers(1, 512, 4).tolist()
    b = system + rng.integers(1, 512, 6).tolist()
    eng = engine_factory(path, 2)
    ra = eng.submit(Request(a, greedy(200)))
    _wait_first_piece(ra)  # a is generating in slot 0 now
    cb = eng.generate(b, greedy())
    ra.cancel()
    assert cb.cache_n == len(system)
    assert ids(cb) == reference(path, b)


def test_prompts_arriving_together_share_their_prefix(model_paths, engine_factory):
    """A request whose prefix another slot is still evaluating waits for it instead of computing it too."""
    path = model_paths["llama"]
    rng = np.random.default_rng(12)
    system = rng.integers(1, 512, 200).tolist()
    ps = [system + rng.integers(1, 512, 5 + i).tolist() for i in range(3)]
    eng = engine_factory(path, 4, n_ubatch=64)
    got = [r.result() for r in [eng.submit(Request(p, greedy())) for p in ps]]
    assert got[0].cache_n == 0
    assert all(c.cache_n == len(system) for c in got[1:])
    assert eng.n_prompt_tokens == sum(len(p) for p in ps) - 2 * len(system)


def test_queue_full(model_paths, engine_factory):
    from pyrt.engine.scheduler import QueueFullError

    eng = engine_factory(model_paths["llama"], 1)
    eng.max_queue = 1
    a = eng.submit(Request(prompts(1, seed=40)[0], greedy(1000)))
    _wait_first_piece(a)
    b = eng.submit(Request(prompts(1, seed=41)[0], greedy(2)))
    with pytest.raises(QueueFullError):
        eng.submit(Request(prompts(1, seed=42)[0], greedy(2)))
    a.cancel()
    assert b.result().predicted_n == 2


def test_text_stream_and_stop_strings(model_paths, engine_factory):
    path = model_paths["llama"]
    llm = get_llm(path, 2)
    p = prompts(1, seed=21)[0]
    dec = llm.tokenizer.decoder()  # streamed text is the tokens' pieces (no leading-space removal)
    full = "".join(dec.feed(t) for t in reference(path, p, n_gen=24)) + dec.flush()
    assert len(full) > 12
    stop = full[5:9]
    i = full.find(stop)
    eng = engine_factory(path, 2)
    r = eng.submit(Request(p, greedy(24, stop=[stop, "\x00never"])))
    pieces, c = [], None
    for ev in r.events():
        if isinstance(ev, Piece):
            pieces.append(ev.text)
        else:
            c = ev
    assert c.finish_reason == "stop" and c.stop_word == stop
    assert c.text == full[:i] == "".join(pieces)
    # without stop strings the streamed text is the detokenized text
    c2 = eng.generate(p, greedy(24))
    assert c2.text == full


class _Bytes:
    """A tokenizer stand-in whose tokens are raw byte strings."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decoder(self):
        import codecs

        outer = self

        class D:
            dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

            def feed(self, t):
                return self.dec.decode(outer.pieces[t], final=False)

            def flush(self):
                return self.dec.decode(b"", final=True)
        return D()


def test_text_stream_holds_back_partial_utf8_and_stop_prefixes():
    pieces = ["ab".encode(), "é".encode()[:1], "é".encode()[1:] + b"x", b"ST", b"O", b"P!", b"S"]
    ts = TextStream(_Bytes(pieces), ["STOP"])
    out = [ts.feed(i) for i in range(3)]
    assert out == [("ab", False), ("", False), ("éx", False)]
    assert ts.feed(3) == ("", False)     # "ST" may start "STOP"
    assert ts.feed(4) == ("", False)
    assert ts.feed(5) == ("", True)      # "STOP" found: nothing after it is sent
    assert ts.text == "abéx" and ts.stop_word == "STOP"
    ts2 = TextStream(_Bytes(pieces), ["STOP"])
    for i in (0, 3, 4):
        ts2.feed(i)
    assert ts2.finish() == "STO"         # the end of generation releases a held-back prefix


def test_cancel_frees_cells(model_paths, engine_factory):
    path = model_paths["llama"]
    eng = engine_factory(path, 2)
    r = eng.submit(Request(prompts(1, seed=8)[0], greedy(500)))
    _wait_first_piece(r)
    assert eng.kv_used() > 0
    r.cancel()
    c = r.result()
    assert c.finish_reason == "cancelled"
    assert eng.kv_used() == 0 and eng.n_busy() == 0
    assert not any(s["is_processing"] for s in eng.slot_info)


def test_cancel_while_waiting(model_paths, engine_factory):
    path = model_paths["llama"]
    eng = engine_factory(path, 1)
    ra = eng.submit(Request(prompts(1, seed=9)[0], greedy(300)))
    rb = eng.submit(Request(prompts(1, seed=10)[0], greedy(5)))
    rb.cancel()
    assert rb.result().finish_reason == "cancelled"
    ra.cancel()
    assert ra.result().finish_reason == "cancelled"


def test_small_context_evicts_idle_caches(model_paths, engine_factory):
    """With few cells, idle slots give up their cached prefixes (LRU) and results stay exact."""
    path = model_paths["llama"]
    ps = prompts(6, seed=13)
    eng = engine_factory(path, 2, n_ctx=96)
    for p in ps:
        c = eng.generate(p, greedy())
        assert ids(c) == reference(path, p)
    assert eng.kv_used() <= 96


def test_host_ram_cache_restores_an_evicted_prefix(model_paths):
    """--cache-ram: a prefix whose cells were given to another request comes back from host RAM."""
    path = model_paths["llama"]
    rng = np.random.default_rng(14)
    a = rng.integers(1, 512, 100).tolist()
    b = rng.integers(1, 512, 100).tolist()
    eng = Engine(get_llm(path, 2, n_ctx=160), 2, cache_ram_bytes=64 << 20).start()
    try:
        eng.generate(a, greedy())
        eng.generate(b, greedy())  # needs a's cells
        assert len(eng.host_cache) >= 1
        a2 = a + [7, 8, 9]
        c = eng.generate(a2, greedy())
        assert eng.n_host_restored == 1
        assert c.cache_n == len(a) and c.prompt_n == 3
        assert ids(c) == reference(path, a2)
    finally:
        eng.stop()


def test_context_overflow_and_bad_ids_rejected(model_paths, engine_factory):
    from pyrt.errors import ContextOverflowError, InvalidArgumentError

    eng = engine_factory(model_paths["llama"], 1, n_ctx=64)
    with pytest.raises(ContextOverflowError):
        eng.submit(Request(list(range(1, 100)), greedy()))
    with pytest.raises(InvalidArgumentError):
        eng.submit(Request([1, 2, 100000], greedy()))
    with pytest.raises(InvalidArgumentError):
        eng.submit(Request([], greedy()))
    assert eng.generate([1, 2, 3], greedy(3)).predicted_n == 3  # still serving


def test_generation_ends_when_the_context_is_full(model_paths, engine_factory):
    eng = engine_factory(model_paths["llama"], 1, n_ctx=64)
    c = eng.generate(list(range(1, 41)), greedy(-1))
    assert c.finish_reason == "length" and c.predicted_n == 64 - 40 + 1


def test_slot_save_restore_into_another_slot(model_paths, engine_factory, tmp_path):
    path = model_paths["llama"]
    rng = np.random.default_rng(6)
    a = rng.integers(1, 512, 40).tolist()
    eng = engine_factory(path, 2)
    ca = eng.generate(a, greedy(4, id_slot=0))
    n_cached = len(a) + 3  # the last generated token is never evaluated
    f = str(tmp_path / "slot0.bin")
    info = eng.call(lambda e: e.slot_save(0, f)).result()
    assert info["n_saved"] == n_cached and os.path.getsize(f) == info["n_written"]
    eng.call(lambda e: e.slot_erase(0)).result()
    assert eng.kv_used() == 0
    data = open(f, "rb").read()
    # a corrupt file is refused and nothing changes
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(StateError):
        eng.call(lambda e: e.slot_restore(1, bytes(bad))).result()
    with pytest.raises(StateError):
        eng.call(lambda e: e.slot_restore(1, data[: len(data) // 3])).result()
    assert eng.kv_used() == 0
    info = eng.call(lambda e: e.slot_restore(1, data)).result()
    assert info["n_restored"] == n_cached
    b = a + ids(ca)[:3] + [5, 6, 7]
    cb = eng.generate(b, greedy())
    assert cb.slot == 1 and cb.cache_n == n_cached and cb.prompt_n == 3
    assert ids(cb) == reference(path, b)


def test_session_state_file_moves_a_conversation_between_engines(model_paths, tmp_path):
    """Request.state_path: the turn's sequence is saved when it ends; another engine (a fresh context, as
    another replica) resumes from the file and evaluates only the new tokens, with the reference's output;
    an engine that still holds the conversation does not read the file; a foreign or corrupt file is
    ignored (the prompt is evaluated)."""
    from pyrt.kv.state import read_tokens

    path = model_paths["llama"]
    rng = np.random.default_rng(21)
    a = rng.integers(1, 512, 50).tolist()
    f = str(tmp_path / "session.state")
    e1 = Engine.launch(lambda: LLM(path, n_ctx=512, n_seq_max=2, n_threads=1), 2)
    e2 = Engine.launch(lambda: LLM(path, n_ctx=512, n_seq_max=2, n_threads=1), 2)
    try:
        c1 = e1.submit(Request(a, greedy(4), state_path=f)).result()
        e1.wait_saved()
        held = a + ids(c1)[:3]  # the last generated token is never evaluated
        assert e1.n_state_saved == 1 and read_tokens(f) == held
        b = held + [5, 6, 7]
        c2 = e2.submit(Request(b, greedy(), state_path=f)).result()
        e2.wait_saved()
        assert e2.n_state_restored == 1
        assert c2.cache_n == len(held) and c2.prompt_n == 3
        assert ids(c2) == reference(path, b)
        # the next turn back on e1: its own cache holds the first turn, the file (turn 2) holds more
        c = b + ids(c2)[:11] + [9, 9]
        c3 = e1.submit(Request(c, greedy(), state_path=f)).result()
        e1.wait_saved()
        assert e1.n_state_restored == 1 and c3.prompt_n == 2
        assert ids(c3) == reference(path, c)
        # e1 saved turn 3 itself: turn 4 there reuses its cache without reading the file
        d = c + ids(c3)[:11] + [4]
        c4 = e1.submit(Request(d, greedy(2), state_path=f)).result()
        assert e1.n_state_restored == 1 and c4.prompt_n == 1
        # a corrupt file is ignored: the prompt is evaluated, and the file is replaced by the new turn
        g = str(tmp_path / "bad.state")
        data = bytearray(open(f, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(g, "wb").write(bytes(data))
        e3 = Engine.launch(lambda: LLM(path, n_ctx=512, n_seq_max=1, n_threads=1), 1)
        try:
            c5 = e3.submit(Request(d, greedy(2), state_path=g)).result()
            assert c5.cache_n == 0 and c5.prompt_n == len(d) and e3.n_state_restored == 0
            assert ids(c5) == reference(path, d, 2)
            e3.wait_saved()
            assert read_tokens(g) == d + ids(c5)[:1]
        finally:
            e3.stop()
    finally:
        e1.stop()
        e2.stop()


def test_stop_drains_and_refuses_new(model_paths):
    from pyrt.engine.scheduler import EngineStoppedError

    eng = Engine(get_llm(model_paths["llama"], 2), 2).start()
    r = eng.submit(Request(prompts(1, seed=30)[0], greedy(2000)))
    _wait_first_piece(r)
    t = threading.Thread(target=eng.stop, kwargs=dict(grace_s=0.2))
    t.start()
    t.join(10)
    assert r.result().finish_reason == "cancelled"
    with pytest.raises(EngineStoppedError):
        eng.submit(Request([1, 2, 3], greedy()))


@pytest.mark.slow
def test_gemma_concurrent_equals_sequential_and_prefix(gemma_path):
    """Gemma 3 with its sliding-window cache: concurrent == one at a time (without prefix reuse, which
    changes how the prompt is chunked and so the low-order bits, as in llama.cpp), and a shared system
    prompt longer than the window is evaluated once."""
    llm = LLM(gemma_path, n_ctx=4096, n_seq_max=4, n_threads=2)
    ref = LLM(gemma_path, n_ctx=4096, n_seq_max=1, n_threads=2)
    tk = llm.tokenizer
    system = tk.tokenize("You are a helpful assistant. " + " ".join(f"Fact {i}: the number {i} is {i * i}."
                                                                       for i in range(90)), add_special=True)
    assert len(system) > llm.model.n_swa
    qs = ["What is 7 squared?", "Name a colour.", "Say hello.", "Count to three."]
    ps = [system + tk.tokenize(" " + q, add_special=False) for q in qs]
    eng = Engine(llm, 4).start()
    try:
        # queued from the engine thread between two steps, so that every run batches the same rows (decode rows
        # batched with other sequences differ from a lone decode in the last bits; a different step composition
        # could turn a near-tie the other way)
        reqs = eng.call(lambda e: [e.submit(Request(p, greedy(16, cache_prompt=False))) for p in ps]).result()
        got = [r.result() for r in reqs]
        assert eng.max_seqs_in_step >= 2
        for p, c in zip(ps, got):
            ref.reset()
            assert ids(c) == list(ref.generate_ids(p, max_tokens=16, temperature=0.0, ignore_eos=True))
        eng.call(lambda e: [e.slot_erase(i) for i in range(4)]).result()
        first = eng.generate(ps[0], greedy(4))
        assert first.cache_n == 0
        rest = [r.result() for r in [eng.submit(Request(p, greedy(4))) for p in ps[1:]]]
        for p, c in zip(ps[1:], rest):
            assert c.cache_n == len(system) and c.prompt_n == len(p) - len(system)
    finally:
        eng.stop()


def test_constrained_requests_match_llm_and_leave_others_unchanged(model_paths, engine_factory):
    """Grammar-constrained requests in the engine give what LLM.generate_ids gives under the same grammar
    (greedy), end with "stop" when the grammar is complete (also with ignore_eos) and with "length" when
    max_tokens comes first; the unconstrained requests beside them are unchanged; a grammar that does not
    compile is refused by submit, with nothing queued."""
    pytest.importorskip("llguidance")
    from pyrt.errors import GrammarError

    path = model_paths["llama"]
    eng = engine_factory(path, 4)
    ps = prompts(4, seed=40)
    rx = "[ab]{2,5}( [0-9]{1,3}){0,3}"
    cases = [(ps[0], None, 40), (ps[1], ("regex", rx), 40), (ps[2], ("regex", "[ab]{8}"), 3), (ps[3], None, 40)]
    reqs = [eng.submit(Request(p, greedy(n, constraint=spec))) for p, spec, n in cases]
    out = [r.result() for r in reqs]
    for (p, spec, n), c in zip(cases, out):
        kw = {} if spec is None else {"regex": spec[1]}
        assert ids(c) == reference(path, p, n, **kw), spec
    assert out[1].finish_reason == "stop" and re.fullmatch(rx, out[1].text), out[1].text
    assert out[2].finish_reason == "length" and re.fullmatch("[ab]{3}", out[2].text)
    assert out[0].finish_reason == out[3].finish_reason == "length"
    n_req = eng.n_requests
    with pytest.raises(GrammarError, match="invalid regex"):
        eng.submit(Request(ps[0], greedy(constraint=("regex", "(unclosed"))))
    assert eng.n_waiting() == 0 and eng.n_requests == n_req


def test_launch_loads_in_a_thread_that_has_ended(model_paths):
    """Engine.launch runs the loader in a passing thread, over when the engine starts (so the engine thread
    is the only long-lived thread that runs parallel kernels: pyrt.backends.cpu), serves from its LLM, and
    hands a loader's exception to the caller with no engine left running."""
    path = model_paths["llama"]
    where = []

    def load():
        where.append(threading.current_thread())
        return LLM(path, n_ctx=256, n_seq_max=1, n_threads=1)

    eng = Engine.launch(load, 1)
    try:
        assert where[0] is not threading.current_thread() and not where[0].is_alive()
        p = prompts(1, seed=31)[0]
        assert ids(eng.submit(Request(p, greedy())).result()) == reference(path, p)
    finally:
        eng.stop()

    class LoadFailed(Exception):
        pass

    def bad():
        raise LoadFailed("no such file")

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(LoadFailed, match="no such file"):
        Engine.launch(bad, 1)
    assert {t.name for t in threading.enumerate()} - before == set()
