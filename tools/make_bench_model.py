"""Write a TinyLlama-shaped GGUF with random quantized weights for benchmarks (models/ is git-ignored).

Blocks are drawn directly as random bytes with chosen scales (no float quantization of GBs),
so a 1.1B-parameter file takes seconds; the real llama SPM vocab is copied from tests/data/vocab.
Imports numpy, gguf and tools/synthetic only. `python tools/make_bench_model.py --type q4_0 -o FILE`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic  # noqa: E402
from pyrt.io.mapping import drop_from_page_cache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM_VOCAB = os.path.join(ROOT, "tests", "data", "vocab", "ggml-vocab-llama-spm.gguf")

# TinyLlama-1.1B shapes.
TINYLLAMA = dict(n_embd=2048, n_ff=5632, n_layer=22, n_head=32, n_head_kv=4, n_vocab=32000,
                 n_ctx=2048, rms_eps=1e-5, rope_freq_base=10000.0)

TYPES = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0, "q4_k": QT.Q4_K, "q6_k": QT.Q6_K, "f16": QT.F16}
FILE_TYPE = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_S, "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
             "f16": gguf.LlamaFileType.MOSTLY_F16}
STD_PROJ = 0.02  # keeps the residual stream O(1..10) through 22 layers with rmsnorm inputs
STD_EMBD = 0.02


def _scales(rng, nb, base):
    """[nb] f16 block scales: base * U(0.8, 1.25) with a random sign (cancels the q offset's mean)."""
    s = base * rng.uniform(0.8, 1.25, nb) * np.where(rng.random(nb) < 0.5, -1.0, 1.0)
    return s.astype(np.float16)


def random_blocks(rng, rows: int, cols: int, qtype: QT, std: float) -> np.ndarray:
    """Random valid blocks [rows, cols/bs*type_size] u8 whose dequantized values have ~std."""
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    if qtype == QT.F16:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)
    nb = rows * cols // bs
    blk = np.frombuffer(rng.bytes(nb * ts), dtype=np.uint8).reshape(nb, ts).copy()
    if qtype == QT.Q4_0:  # d, qs[16]: x = d * (q - 8), q uniform 0..15 (std 4.61)
        blk[:, 0:2] = _scales(rng, nb, std / 4.61).view(np.uint8).reshape(nb, 2)
    elif qtype == QT.Q8_0:  # d, qs[32] int8: x = d * q, q uniform -128..127 (std 73.9)
        blk[:, 0:2] = _scales(rng, nb, std / 73.9).view(np.uint8).reshape(nb, 2)
    elif qtype == QT.Q4_K:  # d, dmin, scales[12], qs[128]: x = d*sc*q - dmin*m
        sc = rng.integers(32, 64, (nb, 8), dtype=np.uint8)
        m = sc.copy()  # with dmin = 7.5 d the sub-block means cancel: q averages 7.5
        d = (std / (4.61 * 47.5) * rng.uniform(0.8, 1.25, nb)).astype(np.float16)
        dmin = (d.astype(np.float32) * 7.5).astype(np.float16)
        blk[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
        blk[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
        blk[:, 4:16] = synthetic._pack_scales_k4(sc, m)
    elif qtype == QT.Q6_K:  # ql[128], qh[64], scales[16] i8, d: x = d*sc*(q - 32)
        sc = rng.integers(-127, 128, (nb, 16)).astype(np.int8)
        blk[:, 192:208] = sc.view(np.uint8)
        d = (std / (18.5 * 73.3) * rng.uniform(0.8, 1.25, nb)).astype(np.float16)
        blk[:, 208:210] = d.view(np.uint8).reshape(nb, 2)
    else:
        raise ValueError(f"unsupported type {qtype!r}")
    return blk.reshape(rows, -1)


def _spm_vocab_fields():
    r = gguf.GGUFReader(SPM_VOCAB)
    f = r.fields
    return {
        "tokens": [str(t) for t in f["tokenizer.ggml.tokens"].contents()],
        "scores": [float(s) for s in f["tokenizer.ggml.scores"].contents()],
        "types": [int(t) for t in f["tokenizer.ggml.token_type"].contents()],
        "bos": int(f["tokenizer.ggml.bos_token_id"].contents()),
        "eos": int(f["tokenizer.ggml.eos_token_id"].contents()),
        "unk": int(f["tokenizer.ggml.unknown_token_id"].contents()),
    }


def write_bench_model(path, wtype: str = "q4_0", seed: int = 0, n_layer: int | None = None) -> dict:
    """Write the benchmark model; returns its hyperparameters. n_layer overrides 22 (for quick checks)."""
    wtype = wtype.lower()
    if wtype not in TYPES:
        raise ValueError(f"unsupported type {wtype!r}; expected one of {sorted(TYPES)}")
    qtype = TYPES[wtype]
    hp = dict(TINYLLAMA, wtype=wtype, seed=seed)
    if n_layer is not None:
        hp["n_layer"] = n_layer
    n_embd, n_ff, n_vocab = hp["n_embd"], hp["n_ff"], hp["n_vocab"]
    head_dim = n_embd // hp["n_head"]
    n_embd_k = head_dim * hp["n_head_kv"]
    voc = _spm_vocab_fields()
    if len(voc["tokens"]) != n_vocab:
        raise ValueError("vocab size mismatch")
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(os.fspath(path), "llama")
    w.add_name(f"pyrt-bench-tinyllama-shape-{wtype}")
    w.add_block_count(hp["n_layer"])
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_rope_freq_base(hp["rope_freq_base"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(FILE_TYPE[wtype]))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(voc["tokens"])
    w.add_token_scores(voc["scores"])
    w.add_token_types(voc["types"])
    w.add_bos_token_id(voc["bos"])
    w.add_eos_token_id(voc["eos"])
    w.add_unk_token_id(voc["unk"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def mat(name, rows, cols, std=STD_PROJ):
        data = random_blocks(rng, rows, cols, qtype, std)
        if qtype == QT.F16:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, (1.0 + 0.05 * rng.standard_normal(n_embd)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, STD_EMBD)
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight")
        mat(p + "attn_q.weight", n_embd, n_embd)
        mat(p + "attn_k.weight", n_embd_k, n_embd)
        mat(p + "attn_v.weight", n_embd_k, n_embd)
        mat(p + "attn_output.weight", n_embd, n_embd)
        norm(p + "ffn_norm.weight")
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    norm("output_norm.weight")
    mat("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hp


def check_with_llama_cpp(path, n_tokens: int = 16) -> np.ndarray:
    """Load with llama-cpp-python and return the logits [n_tokens, n_vocab] of a fixed prompt."""
    import make_goldens
    llm = make_goldens.load(path)
    ids = [1] + [int(t) for t in np.random.default_rng(0).integers(259, 32000, n_tokens - 1)]
    return make_goldens.eval_logits(llm, ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="q4_0", choices=sorted(TYPES))
    ap.add_argument("-o", "--output", default=None, help="default models/bench-llama-<type>.gguf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=None, help="override n_layer (22)")
    ap.add_argument("--check", action="store_true", help="load with llama-cpp-python, check finite logits")
    args = ap.parse_args(argv)
    out = args.output or os.path.join(ROOT, "models", f"bench-llama-{args.type}.gguf")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t0 = time.perf_counter()
    write_bench_model(out, args.type, args.seed, args.layers)
    drop_from_page_cache(out)  # the first load then reads it back in 2 MiB folios (pyrt.io.mapping)
    print(f"wrote {out}: {os.path.getsize(out) / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f} s")
    if args.check:
        logits = check_with_llama_cpp(out)
        ok = bool(np.isfinite(logits).all())
        print(f"llama.cpp: finite={ok} logit std={logits.std():.3f} "
              f"top1={logits.argmax(1)[:8].tolist()}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
