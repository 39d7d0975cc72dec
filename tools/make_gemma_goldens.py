"""Record llama.cpp goldens (via llama-cpp-python) for the real Gemma 3 270M Q4_K_M model.

Writes tests/data/gemma/: tokenizer.json (the tokenizer corpus, both modes), greedy.npz (64 greedy
ids per prompt with llama.cpp's top1-top2 margins), logits.npz (a 128-token prompt: per-position
top-64 ids/values and the logits at a fixed 4096-id vocab subset), manifest.json (model SHA-256,
oracle version, settings, perplexity of tests/data/ppl). Imports llama_cpp and tools/ only, never pyrt.
Usage: python tools/make_gemma_goldens.py [-m models/gemma-3-270m-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens  # noqa: E402  (sha256_file, _no_extra_buffers, margin, llama_cpp_info)
import make_tokenizer_goldens  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
OUT = DATA / "gemma"
PPL_TEXT = DATA / "ppl" / "pride_and_prejudice_ch1.txt"

N_CTX = 512
N_BATCH = 128
N_THREADS = 2
N_GEN = 64
N_LOGITS = 128
N_TOP = 64
N_SUBSET = 4096
SUBSET_SEED = 20250
PPL_N_CTX = 128
PPL_CHUNKS_SHORT = 4  # the test's fast run scores only the first chunks

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Water boils at 100 degrees Celsius. At the top of a high mountain, water boils",
    "Die drei wichtigsten Flüsse Deutschlands sind",
    "1, 2, 3, 5, 8, 13,",
]
# 128-token logits prompt: an English paragraph (tokenized with BOS, truncated to N_LOGITS ids)
LOGITS_TEXT = (
    "The history of astronomy is long and varied. Ancient peoples watched the sky to keep track of the "
    "seasons, to navigate across seas and deserts, and to tell stories about the gods. The Babylonians "
    "recorded the positions of the planets on clay tablets; the Greeks built geometric models of the "
    "heavens; and medieval scholars in Baghdad, Samarkand and Toledo refined those models with careful "
    "observations. In the seventeenth century the telescope changed everything: Galileo saw the moons of "
    "Jupiter, the phases of Venus and the craters of the Moon, and Kepler showed that the planets move on "
    "ellipses rather than circles. Newton then explained why, with a single law of gravitation that "
    "governs both a falling apple and the orbit of the Moon."
)


def load(path, n_ctx=N_CTX, n_batch=N_BATCH, flash_attn=False):
    import llama_cpp
    make_goldens._no_extra_buffers()
    return llama_cpp.Llama(
        os.fspath(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=N_THREADS,
        n_threads_batch=N_THREADS, logits_all=True, verbose=False, seed=0, flash_attn=flash_attn)


def eval_logits(llm, ids) -> np.ndarray:
    """[len(ids), n_vocab] f32 logits from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def tokenize(llm, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
    return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)]


def nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(row)[target] per row, as llama-perplexity: f32 max and exp, double sum."""
    mx = logits.max(axis=1)
    se = np.exp(logits - mx[:, None]).sum(axis=1, dtype=np.float64)
    tl = logits[np.arange(len(targets)), targets]
    return -((tl - mx).astype(np.float64) - np.log(se))


def perplexity(path, text: str, n_ctx: int, n_chunks: int = -1, flash_attn=False) -> dict:
    """llama-perplexity's default method (n_batch = n_ctx, one sequence per pass)."""
    llm = load(path, n_ctx=n_ctx, n_batch=n_ctx, flash_attn=flash_attn)
    tokens = tokenize(llm, text, add_bos=True)  # common_tokenize(ctx, text, add_special=true)
    import llama_cpp
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    n_chunk_max = len(tokens) // n_ctx
    n_chunk = n_chunk_max if n_chunks < 0 else min(n_chunks, n_chunk_max)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    running = []
    for i in range(n_chunk):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        inp = list(chunk)
        if add_bos:
            inp[0] = bos
        logits = eval_logits(llm, inp)
        v = nll_rows(logits[first:n_ctx - 1], np.array(chunk[first + 1:], dtype=np.int64))
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += n_ctx - first - 1
        running.append(math.exp(nll / count))
    m = nll / count
    var = nll2 / count - m * m
    ppl = math.exp(m)
    return {"n_ctx": n_ctx, "n_chunks": n_chunk, "n_tokens": len(tokens), "count": count,
            "ppl": ppl, "ppl_err": math.sqrt(var / (count - 1)) * ppl, "running": running}


def make(model: Path) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    import llama_cpp

    # (a) tokenization of the shared corpus, both modes (vocab_only load)
    corpus = json.loads((DATA / "tokenizer_corpus.json").read_text(encoding="utf-8"))
    tok = make_tokenizer_goldens.make("gemma3", corpus, model, pieces=False)
    (OUT / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=True, separators=(",", ":")) + "\n",
                                        encoding="utf-8")
    print(f"tokenizer: {len(tok['cases'])} cases, eog={tok['eog']}", flush=True)

    llm = load(model)
    # (b) greedy generation, EOS ignored
    prompt_ids, gen_ids, gen_margin = [], [], []
    for p in PROMPTS:
        ids = tokenize(llm, p, add_bos=True)
        gen, mar = make_goldens.greedy(llm, ids, N_GEN)
        prompt_ids.append(ids)
        gen_ids.append(gen)
        gen_margin.append(mar)
        print(f"greedy {p[:30]!r}: min margin {min(mar):.4f} -> {llm.detokenize(gen)[:60]!r}", flush=True)
    offsets = np.cumsum([0] + [len(x) for x in prompt_ids]).astype(np.int32)
    np.savez_compressed(OUT / "greedy.npz", prompt_ids=np.concatenate(prompt_ids).astype(np.int32),
                        prompt_offsets=offsets, gen_ids=np.array(gen_ids, dtype=np.int32),
                        gen_margin=np.array(gen_margin, dtype=np.float32))

    # (c) logits of a 128-token prompt: top-64 per position and a fixed vocab subset
    ids = tokenize(llm, LOGITS_TEXT, add_bos=True)[:N_LOGITS]
    if len(ids) != N_LOGITS:
        raise RuntimeError(f"logits text has only {len(ids)} tokens")
    logits = eval_logits(llm, ids)
    n_vocab = logits.shape[1]
    subset = np.sort(np.random.default_rng(SUBSET_SEED).choice(n_vocab, N_SUBSET, replace=False)).astype(np.int32)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :N_TOP].astype(np.int32)
    top_vals = np.take_along_axis(logits, order, axis=1)
    np.savez_compressed(OUT / "logits.npz", ids=np.array(ids, dtype=np.int32), top_ids=order, top_vals=top_vals,
                        subset_ids=subset, subset_logits=np.ascontiguousarray(logits[:, subset]))
    fa = eval_logits(load(model, flash_attn=True), ids)
    del llm

    # (d) perplexity of the committed text at a small n_ctx
    text = PPL_TEXT.read_text(encoding="utf-8")
    ppl_full = perplexity(model, text, PPL_N_CTX)
    ppl_short = perplexity(model, text, PPL_N_CTX, PPL_CHUNKS_SHORT)
    ppl_fa = perplexity(model, text, PPL_N_CTX, flash_attn=True)
    print(f"ppl n_ctx={PPL_N_CTX}: {ppl_full['ppl']:.4f} +/- {ppl_full['ppl_err']:.5f} "
          f"({ppl_full['n_chunks']} chunks; first {PPL_CHUNKS_SHORT}: {ppl_short['ppl']:.4f}; "
          f"flash attn: {ppl_fa['ppl']:.4f})", flush=True)

    margins = np.array(gen_margin)
    manifest = {
        "oracle": make_goldens.llama_cpp_info(),
        "model": {"file": model.name, "sha256": make_goldens.sha256_file(model), "size": model.stat().st_size},
        "settings": {
            "n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_BATCH, "n_threads": N_THREADS,
            "type_k": "f16", "type_v": "f16", "flash_attn": False, "use_extra_bufts": False,
            "greedy": f"{N_GEN} argmax ids per prompt, fed back one at a time, EOS ignored",
            "logits": f"{N_LOGITS} ids of LOGITS_TEXT (with BOS); top-{N_TOP} per row and "
                      f"{N_SUBSET} vocab ids from default_rng({SUBSET_SEED}).choice, sorted",
        },
        "prompts": PROMPTS,
        "logits_text": LOGITS_TEXT,
        "min_margin_greedy": float(margins.min()),
        "min_margin_logits": float(min(make_goldens.margin(r) for r in logits)),
        "logits_std": float(logits.std()),
        "nmse_flash_attn_vs_off": float(((fa - logits) ** 2).sum() / (logits ** 2).sum()),
        "top1_flash_attn_vs_off": float((fa.argmax(1) == logits.argmax(1)).mean()),
        "perplexity": {"text": str(PPL_TEXT.relative_to(ROOT)), "method": "llama-perplexity default "
                       "(BOS as first token of each chunk, second half scored, n_batch = n_ctx)",
                       "full": ppl_full, "short": ppl_short, "flash_attn_full": ppl_fa["ppl"]},
    }
    with open(OUT / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"fa vs off: nmse {manifest['nmse_flash_attn_vs_off']:.3e} top1 {manifest['top1_flash_attn_vs_off']}")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=str(ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    args = ap.parse_args(argv)
    make(Path(args.model).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
