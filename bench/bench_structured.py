"""Cost of constrained decoding: engine build and grammar compile times, per-token mask times, and TG with
and without a JSON schema (pyrt.runtime.constrain on llguidance; optionally outlines-core beside it).

    python bench/bench_structured.py masks                      # Gemma 3 262k and LLaMA SPM 32k vocabularies
    python bench/bench_structured.py tg -n 64 -r 3              # Gemma 3 270M TG, free vs JSON schema
    python bench/bench_structured.py tg -m synthetic-32k --chat-template chatml -n 64 -r 3
    python bench/bench_structured.py outlines                   # outlines-core index build, same schemas
    python bench/bench_structured.py validity                   # all schemas on Gemma 3 270M (~15 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = json.load(open(os.path.join(ROOT, "tests", "data", "json_schemas", "schemas.json")))["schemas"]
VOCAB_32K = os.path.join(ROOT, "tests", "data", "vocab", "ggml-vocab-llama-spm.gguf")
REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"[a-z]{2,6}@[a-z]{2,5}\.(com|org)", r"#[0-9a-f]{6}"]
GRAMMARS = ['root ::= "[" item ("," item)* "]"\nitem ::= [0-9]+ | "\\"" [a-z]+ "\\""',
            'start: expr\nexpr: term (("+" | "-") term)*\nterm: NUMBER | "(" expr ")"\nNUMBER: /[0-9]+/']


def _default_model() -> str:
    from pyrt.default_model import default_model_path
    return default_model_path(quiet=True)


def _tokenizer(path: str):
    from pyrt.io.gguf_file import GGUFFile
    from pyrt.runtime.tokenizer import Tokenizer
    return Tokenizer.from_metadata(dict(GGUFFile(path, use_mmap=True).metadata))


def _ms(xs) -> str:
    xs = sorted(xs)
    p90 = xs[int(0.9 * (len(xs) - 1))]
    return f"median {1e3 * statistics.median(xs):.3f} ms, p90 {1e3 * p90:.3f} ms, max {1e3 * xs[-1]:.3f} ms"


def cmd_masks(a) -> None:
    from pyrt.runtime.constrain import GrammarEngine
    for label, path in (("gemma3 262k", a.model or _default_model()), ("llama-spm 32k", VOCAB_32K)):
        tok = _tokenizer(path)
        t0 = time.perf_counter()
        tok.token_bytes()
        t1 = time.perf_counter()
        eng = GrammarEngine(tok)
        t2 = time.perf_counter()
        print(f"## {label} (n_vocab {tok.n_vocab})\n")
        print(f"token bytes {1e3 * (t1 - t0):.0f} ms, engine build (llguidance token trie) {1e3 * (t2 - t1):.0f} ms")
        sets = (("json_schema", [json.dumps(s["schema"]) for s in SCHEMAS]), ("regex", REGEXES), ("grammar", GRAMMARS))
        rng = np.random.default_rng(0)
        t_fill, t_unpack, t_apply = [], [], []
        logits = rng.standard_normal(tok.n_vocab).astype(np.float32)
        for kind, texts in sets:
            comp = []
            for text in texts:
                t0 = time.perf_counter()
                eng.compile(kind, text)
                comp.append(time.perf_counter() - t0)
            print(f"compile {kind} x{len(texts)}: total {1e3 * sum(comp):.1f} ms, {_ms(comp)}")
            for text in texts:  # random walks: every step's mask, as a sampler would see them
                c = eng.constraint(kind, text)
                for _ in range(a.steps):
                    t0 = time.perf_counter()
                    c.fill_mask()
                    t1 = time.perf_counter()
                    allowed = c.allowed()
                    t2 = time.perf_counter()
                    c.mask_logits(logits.copy())
                    t3 = time.perf_counter()
                    t_fill.append(t1 - t0)
                    t_unpack.append(t2 - t1)
                    t_apply.append(t3 - t2)
                    ids = np.flatnonzero(allowed)
                    ids = ids[~np.isin(ids, eng.eog_ids)]
                    if c.is_stopped() or not len(ids):
                        break
                    c.accept(int(rng.choice(ids)))
        print(f"per token over {len(t_fill)} steps: fill_mask (llguidance) {_ms(t_fill)}")
        print(f"  bitmask -> bool (np.unpackbits, cached mask) {_ms(t_unpack)}")
        print(f"  mask_logits (unpack + -inf where disallowed, on a copy) {_ms(t_apply)}\n")


def _synthetic_32k() -> str:
    """tools/synthetic.py's llama (n_embd 256, 2 layers, Q8_0) with the 32000-token LLaMA SPM vocabulary."""
    import tempfile
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import synthetic
    from pyrt.io.gguf_file import GGUFFile
    md = GGUFFile(VOCAB_32K, use_mmap=True).metadata
    vocab = ([str(t) for t in md["tokenizer.ggml.tokens"]], [float(x) for x in md["tokenizer.ggml.scores"]],
             [int(x) for x in md["tokenizer.ggml.token_type"]])
    synthetic.spm_vocab = lambda n_vocab: vocab
    path = os.path.join(tempfile.mkdtemp(), "synthetic-llama-32k-q8_0.gguf")
    synthetic.write_model(path, "llama", "Q8_0", n_vocab=len(vocab[0]), n_ctx=1024)
    return path


def cmd_tg(a) -> None:
    import pyrt
    path = _synthetic_32k() if a.model == "synthetic-32k" else a.model or _default_model()
    llm = pyrt.load(path, n_ctx=1024, n_threads=a.threads)
    schema = {"type": "object", "properties": {
        "title": {"type": "string"}, "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}}, "summary": {"type": "string"}},
        "required": ["title", "year", "tags", "summary"], "additionalProperties": False}
    msgs = [{"role": "user", "content": "Describe a film you like as JSON with title, year, tags and a long summary."}]
    kw = dict(chat_template=a.chat_template, max_tokens=a.n, temperature=0.0, ignore_eos=True)
    rows = {"free": [], "json_schema": []}
    list(llm.chat(msgs, **{**kw, "max_tokens": 4}))  # prompt into the cache: later runs re-evaluate one token
    for r in range(a.reps):
        for mode in ("free", "json_schema"):  # interleaved: load from other processes hits both alike
            extra = {"json_schema": schema} if mode == "json_schema" else {}
            t = llm.ctx.timings
            n0, e0 = t.n_eval, t.t_eval
            t0 = time.perf_counter()
            n = sum(1 for _ in llm.chat(msgs, **kw, **extra))
            wall = time.perf_counter() - t0
            rows[mode].append((n, wall, t.t_eval - e0, t.n_eval - n0))
    print(f"model {os.path.basename(path)}, n_vocab {llm.n_vocab}, threads {llm.n_threads}, greedy, "
          f"{a.n} tokens x {a.reps} interleaved runs")
    print("| mode | tokens | TG t/s (wall, whole loop) | ms/token | decode ms/token |")
    print("|---|---:|---:|---:|---:|")
    med = {}
    for mode, rs in rows.items():
        tps = [n / w for n, w, _, _ in rs]
        dec = [te / ne * 1e3 for _, _, te, ne in rs if ne]
        med[mode] = statistics.median(tps)
        print(f"| {mode} | {rs[0][0]} | {med[mode]:.2f} | {1e3 / med[mode]:.2f} | {statistics.median(dec):.2f} |")
    print(f"\nJSON schema / free TG: {med['json_schema'] / med['free']:.3f}")


def cmd_outlines(a) -> None:
    try:
        from outlines_core import Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema
    except ImportError:
        sys.exit("outlines-core is not installed")
    for label, path in (("gemma3 262k", a.model or _default_model()), ("llama-spm 32k", VOCAB_32K)):
        tok = _tokenizer(path)
        tb = tok.token_bytes()
        eos = min(tok.eog_ids)
        m: dict = {}
        for t, b in enumerate(tb):
            if b[:1] != b"\xff" and t not in tok.eog_ids:
                m.setdefault(b, []).append(t)
        t0 = time.perf_counter()
        vocab = Vocabulary(eos, m)
        print(f"## outlines-core, {label}: Vocabulary {1e3 * (time.perf_counter() - t0):.0f} ms")
        times, fails = [], []
        for s in SCHEMAS[: a.n_schemas]:
            try:
                rx = build_regex_from_schema(json.dumps(s["schema"]))
                t0 = time.perf_counter()
                Index(rx, vocab)
                times.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 (report the engine's refusal, go on)
                fails.append(f"{s['name']}: {str(e)[:80]}")
        if times:
            print(f"Index build x{len(times)}: total {sum(times):.2f} s, {_ms(times)}")
        for f in fails:
            print("  failed:", f)


def cmd_validity(a) -> None:
    """Every schema of the set on a real model, greedy and sampled: valid / invalid / incomplete."""
    sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools")]
    import jsonschema
    from test_structured import FORMATS, SAMPLERS
    import pyrt
    llm = pyrt.load(a.model or _default_model(), n_ctx=1024, n_threads=a.threads)
    ok = bad = inc = 0
    for s in SCHEMAS:
        schema = s["schema"]
        msgs = [{"role": "user", "content": f"Reply with one JSON value under this JSON Schema: {json.dumps(schema)}"}]
        for sampler in ("greedy", "top_p_min_p"):
            out = "".join(llm.chat(msgs, chat_template=a.chat_template, max_tokens=a.n, json_schema=schema,
                                   **SAMPLERS[sampler]))
            if llm.last_finish_reason != "stop":
                inc += 1
                print(f"incomplete: {s['name']} {sampler} ...{out[-60:]!r}")
                continue
            try:
                jsonschema.validate(json.loads(out), schema, format_checker=FORMATS)
                ok += 1
            except (ValueError, jsonschema.ValidationError) as e:
                bad += 1
                print(f"INVALID: {s['name']} {sampler} {out[:100]!r}: {str(e)[:100]}")
    print(f"| {2 * len(SCHEMAS)} | {ok} | {bad} | {inc} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("masks")
    m.add_argument("-m", "--model", default=None, help="GGUF whose vocabulary to use (default: Gemma 3 270M)")
    m.add_argument("--steps", type=int, default=40, help="mask steps per grammar")
    t = sub.add_parser("tg")
    t.add_argument("-m", "--model", default=None)
    t.add_argument("-n", type=int, default=64)
    t.add_argument("-r", "--reps", type=int, default=3)
    t.add_argument("-t", "--threads", type=int, default=2)
    t.add_argument("--chat-template", default="gemma")
    o = sub.add_parser("outlines")
    o.add_argument("-m", "--model", default=None)
    o.add_argument("--n-schemas", type=int, default=10)
    v = sub.add_parser("validity")
    v.add_argument("-m", "--model", default=None)
    v.add_argument("-n", type=int, default=320)
    v.add_argument("-t", "--threads", type=int, default=2)
    v.add_argument("--chat-template", default="gemma")
    a = ap.parse_args(argv)
    {"masks": cmd_masks, "tg": cmd_tg, "outlines": cmd_outlines, "validity": cmd_validity}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
