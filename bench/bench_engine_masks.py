"""Grammar masks in the serving engine: what a constrained request beside an unconstrained one costs the
unconstrained one (its per-token time alone vs. beside a JSON-schema request, and that its greedy text is
unchanged), and the engine thread's time per mask (waiting for the mask computed during the forward pass,
then masking the logits row) against the synchronous mask compute and the decode step.

    python bench/bench_engine_masks.py [--model PATH] [--threads N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyrt.engine import Engine, Request  # noqa: E402
from pyrt.engine.requests import GenerationParams  # noqa: E402
from pyrt.runtime.constrain import engine_for  # noqa: E402
from pyrt.runtime.llm import LLM  # noqa: E402

SCHEMAS = json.loads((ROOT / "tests" / "data" / "json_schemas" / "schemas.json").read_text())["schemas"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--schema", default="product")
    a = ap.parse_args()
    if a.model is None:
        from pyrt.default_model import default_model_path
        a.model = default_model_path(quiet=True)
    eng = Engine.launch(lambda: LLM(a.model, n_ctx=1024, n_seq_max=2, n_threads=a.threads), 2)
    llm = eng.llm
    tk = llm.tokenizer
    schema = next(s["schema"] for s in SCHEMAS if s["name"] == a.schema)
    spec = ("json_schema", json.dumps(schema))
    t0 = time.perf_counter()
    ge = engine_for(tk)
    t_vocab = time.perf_counter() - t0
    t0 = time.perf_counter()
    ge.compile(*spec)
    t_compile = time.perf_counter() - t0
    plain_prompt = tk.tokenize("The history of the city of Rome begins", add_special=True)
    json_prompt = tk.tokenize("Write a product as JSON:", add_special=True)

    def plain():
        return Request(plain_prompt, GenerationParams(max_tokens=a.tokens, temperature=0.0, ignore_eos=True,
                                                      cache_prompt=False))

    eng.submit(plain()).result()  # warm-up (Numba, first decode)
    alone = [eng.submit(plain()).result() for _ in range(2)]

    def pair(constraint):
        r1 = plain()
        r2 = Request(json_prompt, GenerationParams(max_tokens=4 * a.tokens, temperature=0.0, constraint=constraint,
                                                   ignore_eos=constraint is None, cache_prompt=False))
        eng.submit(r2)
        eng.submit(r1)
        return r1.result(), r2.result()

    beside, beside_free = [], []
    for _ in range(2):  # alternated, so that load on the machine hits both alike
        beside_free.append(pair(None))
        beside.append(pair(spec))
    n_masked, t_mask = eng.n_masked, eng.t_mask
    eng.stop()

    # the mask alone, synchronously, along the constrained output
    c = ge.constraint(*spec)
    logits = np.zeros(tk.n_vocab, np.float32)
    t_fill, t_apply = [], []
    for ti in beside[0][1].tokens:
        t0 = time.perf_counter()
        c.fill_mask()
        t1 = time.perf_counter()
        c.mask_logits(logits.copy())
        t_apply.append(time.perf_counter() - t1)
        t_fill.append(t1 - t0)
        c.accept(ti.id)

    ms = lambda c: c.predicted_ms / max(1, c.predicted_n)  # noqa: E731
    print(f"model {Path(a.model).name}, n_vocab {tk.n_vocab}, threads {a.threads}, schema {a.schema}")
    print(f"grammar engine vocabulary {t_vocab * 1000:.0f} ms (once per tokenizer), "
          f"schema compile {t_compile * 1000:.1f} ms")
    print(f"unconstrained alone:            {' '.join(f'{ms(c):.2f}' for c in alone)} ms/token")
    print(f"unconstrained beside free text: {' '.join(f'{ms(p):.2f}' for p, _ in beside_free)} ms/token")
    print(f"unconstrained beside JSON:      {' '.join(f'{ms(p):.2f}' for p, _ in beside)} ms/token")
    print(f"constrained beside:             {' '.join(f'{ms(j):.2f}' for _, j in beside)} ms/token, "
          f"{beside[0][1].predicted_n} tokens, finish {beside[0][1].finish_reason}")
    print(f"same greedy text beside as alone: {all(p.text == alone[0].text for p, _ in beside + beside_free)}")
    print(f"engine thread per mask (wait + mask logits): {t_mask / max(1, n_masked) * 1000:.3f} ms over {n_masked}")
    print(f"synchronous fill_mask: median {statistics.median(t_fill) * 1000:.3f} ms, max {max(t_fill) * 1000:.3f} ms; "
          f"mask_logits: median {statistics.median(t_apply) * 1000:.3f} ms")


if __name__ == "__main__":
    main()
