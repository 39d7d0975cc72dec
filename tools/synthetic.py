"""Tiny deterministic GGUF models (llama / qwen2) for tests and llama.cpp goldens.

Owns the synthetic writer, its toy vocabularies and numpy block packers for the
k-quants (gguf-py cannot quantize them). Imports only numpy and gguf, never pyrt.
CLI: `python tools/synthetic.py OUTDIR` writes every arch x weight type.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import quants

ARCHS = ("llama", "qwen2")
WTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K")
QK_K = 256

# (name, arch, wtype, extra dims): every arch x type, plus one tied-embedding variant.
VARIANTS = [(f"{a}-{t.lower()}", a, t, {}) for a in ARCHS for t in WTYPES] + [
    ("qwen2-q8_0-tied", "qwen2", "Q8_0", {"tied": True}),
]

DEFAULT_DIMS = dict(
    n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2, n_vocab=512, n_ctx=256,
    rms_eps=1e-5, rope_freq_base=10000.0, tied=False,
)

# Standard deviations of the float weights the quantized ones approximate.
STD_EMBD = 1.0
STD_EMBD_TIED = 0.02  # a tied model with large embeddings would just predict its input token
STD_PROJ = 0.05
STD_OUT = 0.1
STD_BIAS = 0.1

FILE_TYPE = {
    "F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_S, "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
}

# ---------------------------------------------------------------------------
# vocabularies

_WORDS = (
    "the of and to in is was for on that with as by it he at from his an were are "
    "which this be or had not but one have they you all she there their been has "
    "when who will more no if out so said what up its about into than them can only "
    "other new some could time these two may then do first any my now such like our "
    "over man me even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old "
    "year off come since against go came right used take three ing ed er ly tion ment "
    "ness able ous ive al ic ist ent ant ity est ful less ize ise pre re un dis over "
    "under sub inter trans non anti auto bio geo micro multi semi super tele tri ultra "
    "hello world python model token layer cache matrix vector tensor kernel thread "
    "number string block scale quant float integer batch prompt sample"
).split()


def _unique(seq):
    seen, out = set(), []
    for s in seq:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _filler_words():
    # Deterministic consonant-vowel syllables to pad any vocabulary size.
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    for a in cons:
        for b in vows:
            for c in cons:
                yield a + b + c


def spm_vocab(n_vocab: int):
    """SPM (tokenizer.ggml.model "llama") tokens, scores and types; ids 0/1/2 = unk/bos/eos."""
    if n_vocab < 259 + 64:
        raise ValueError("n_vocab too small for the SPM toy vocabulary")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["\u2581"] + ["\u2581" + c for c in letters] + letters
    pieces += ["\u2581" + w for w in _WORDS] + list(_WORDS)
    pieces = _unique(pieces)
    fill = _filler_words()
    while len(pieces) < n_vocab - len(tokens):
        w = next(fill)
        if "\u2581" + w not in pieces:
            pieces.append("\u2581" + w)
    pieces = pieces[: n_vocab - len(tokens)]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    return tokens + pieces, scores, types + [1] * len(pieces)


def bytes_to_unicode():
    """GPT-2 byte-level alphabet: byte value -> printable unicode char, in GPT-2's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


GPT2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def gpt2_vocab(n_vocab: int):
    """Byte-level BPE tokens, merges and types; the 3 control tokens are the last ids."""
    byte_chars = [c for _, c in bytes_to_unicode()]
    tokens = list(byte_chars)
    have = set(tokens)
    merges = []
    n_merged = n_vocab - 256 - len(GPT2_SPECIALS)
    if n_merged < 64:
        raise ValueError("n_vocab too small for the BPE toy vocabulary")

    def words():
        for w in _WORDS:
            yield "\u0120" + w  # "Ġ" = byte-level space
            yield w
        for w in _filler_words():
            yield "\u0120" + w

    for w in words():
        if len(tokens) - 256 >= n_merged:
            break
        cur = w[0]
        for ch in w[1:]:
            nxt = cur + ch
            if nxt not in have:
                if len(tokens) - 256 >= n_merged:
                    break
                merges.append(f"{cur} {ch}")
                tokens.append(nxt)
                have.add(nxt)
            cur = nxt
    types = [1] * len(tokens) + [3] * len(GPT2_SPECIALS)
    return tokens + list(GPT2_SPECIALS), merges, types


# ---------------------------------------------------------------------------
# k-quant block packers (numpy, deterministic: only exact IEEE ops and rounding)

def _f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _pack_scales_k4(sc, m):
    """6-bit scales/mins [..., 8] u8 -> ggml's 12-byte packing [..., 12] (inverse of get_scale_min_k4)."""
    out = np.empty(sc.shape[:-1] + (12,), dtype=np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (m[..., 0:4] & 63) | ((m[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0xF) | ((m[..., 4:8] & 0xF) << 4)
    return out


def _nibbles_k(q):
    """[..., 256] values 0..15 -> qs [..., 128]: chunk j of 64 -> low nibbles = first 32, high = last 32."""
    q = q.reshape(q.shape[:-1] + (4, 2, 32))
    return (q[..., 0, :] | (q[..., 1, :] << 4)).reshape(q.shape[:-3] + (128,)).astype(np.uint8)


def _affine_k(x, nmax):
    """Per-32 affine params for Q4_K/Q5_K: x [nb, 256] -> (d, dmin, sc, m, q) with q in 0..nmax."""
    xs = x.reshape(-1, 8, 32)
    lo = np.minimum(xs.min(axis=-1), 0.0)
    hi = xs.max(axis=-1)
    scale = (hi - lo) / nmax  # [nb, 8]
    mins = -lo
    d = _f16(scale.max(axis=-1) / 63.0)
    dmin = _f16(mins.max(axis=-1) / 63.0)
    d32, dmin32 = d.astype(np.float32), dmin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32[:, None] > 0, np.rint(scale / d32[:, None]), 0)
        m = np.where(dmin32[:, None] > 0, np.rint(mins / dmin32[:, None]), 0)
    sc = np.clip(sc, 0, 63).astype(np.uint8)
    m = np.clip(m, 0, 63).astype(np.uint8)
    eff = d32[:, None] * sc.astype(np.float32)
    off = dmin32[:, None] * m.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff[..., None] > 0, np.rint((xs + off[..., None]) / eff[..., None]), 0)
    q = np.clip(q, 0, nmax).astype(np.uint8).reshape(-1, 256)
    return d, dmin, _pack_scales_k4(sc, m), q


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> block_q4_K bytes [rows, cols/256*144] (d, dmin, scales[12], qs[128])."""
    rows = x.shape[0]
    d, dmin, scales, q = _affine_k(x.reshape(-1, QK_K).astype(np.float32), 15)
    blk = np.empty((q.shape[0], 144), dtype=np.uint8)
    blk[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    blk[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    blk[:, 4:16] = scales
    blk[:, 16:144] = _nibbles_k(q)
    return blk.reshape(rows, -1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> block_q5_K bytes [rows, cols/256*176] (d, dmin, scales[12], qh[32], qs[128])."""
    rows = x.shape[0]
    d, dmin, scales, q = _affine_k(x.reshape(-1, QK_K).astype(np.float32), 31)
    # qh bit i of byte l holds the 5th bit of element 32*i + l.
    hi = (q >> 4).reshape(-1, 8, 32).astype(np.uint8)
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for i in range(8):
        qh |= hi[:, i, :] << i
    blk = np.empty((q.shape[0], 176), dtype=np.uint8)
    blk[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    blk[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    blk[:, 4:16] = scales
    blk[:, 16:48] = qh
    blk[:, 48:176] = _nibbles_k(q & 0xF)
    return blk.reshape(rows, -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> block_q6_K bytes [rows, cols/256*210] (ql[128], qh[64], scales[16] i8, d)."""
    rows = x.shape[0]
    xs = x.reshape(-1, 16, 16).astype(np.float32)  # [nb, sub-block, 16]
    # Signed scale taken from the largest-magnitude value, as ggml does: that value maps to -32.
    idx = np.abs(xs).argmax(axis=-1)
    vmax = np.take_along_axis(xs, idx[..., None], axis=-1)[..., 0]
    scale = -vmax / 32.0
    amax = np.abs(scale).max(axis=-1)
    sel = np.abs(scale).argmax(axis=-1)
    smax = np.take_along_axis(scale, sel[:, None], axis=-1)[:, 0]
    d = _f16(-smax / 128.0 * np.where(amax > 0, 1.0, 0.0))  # maps the largest scale to -128..127
    d32 = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32[:, None] != 0, np.rint(scale / d32[:, None]), 0)
    sc = np.clip(sc, -128, 127).astype(np.int8)
    eff = d32[:, None] * sc.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff[..., None] != 0, np.rint(xs / eff[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128
    nb = q.shape[0]
    ql = np.empty((nb, 2, 64), dtype=np.uint8)
    qh = np.empty((nb, 2, 32), dtype=np.uint8)
    # Per half: elements l, l+32, l+64, l+96 (l < 32) share qh[l]; ql[l] / ql[l+32] hold low nibbles.
    a, b, c, e = (q[:, :, k * 32:(k + 1) * 32] for k in range(4))
    ql[:, :, 0:32] = (a & 0xF) | ((c & 0xF) << 4)
    ql[:, :, 32:64] = (b & 0xF) | ((e & 0xF) << 4)
    qh[:] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    blk = np.empty((nb, 210), dtype=np.uint8)
    blk[:, 0:128] = ql.reshape(nb, 128)
    blk[:, 128:192] = qh.reshape(nb, 64)
    blk[:, 192:208] = sc.view(np.uint8)
    blk[:, 208:210] = d.view(np.uint8).reshape(-1, 2)
    return blk.reshape(rows, -1)


_KQUANT = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def encode(x: np.ndarray, wtype: str) -> tuple[np.ndarray, QT | None]:
    """float32 [rows, cols] -> (array to write, raw ggml type or None for plain float arrays)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if wtype == "F32":
        return x, None
    if wtype == "F16":
        return x.astype(np.float16), None
    if wtype in _KQUANT:
        return _KQUANT[wtype](x), QT[wtype]
    if wtype in ("BF16", "Q8_0", "Q4_0", "Q5_0"):
        return quants.quantize(x, QT[wtype]), QT[wtype]
    raise ValueError(f"unsupported weight type {wtype!r}")


# ---------------------------------------------------------------------------
# model writer

def _rng(seed: int, name: str) -> np.random.Generator:
    # Per-tensor streams: the float weights depend only on (seed, name), not on the type or order.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _normal(seed, name, shape, std):
    return (_rng(seed, name).standard_normal(shape) * std).astype(np.float32)


def _norm_weight(seed, name, n):
    return (1.0 + 0.1 * _rng(seed, name).standard_normal(n)).astype(np.float32)


def model_tensors(arch: str, seed: int, hp: dict):
    """Yield (gguf name, float32 array, is_matrix) in file order; numpy shapes [n_out, n_in]."""
    n_embd, n_ff, n_vocab = hp["n_embd"], hp["n_ff"], hp["n_vocab"]
    n_embd_k = hp["head_dim"] * hp["n_head_kv"]
    n_embd_q = hp["head_dim"] * hp["n_head"]
    std_embd = STD_EMBD_TIED if hp["tied"] else STD_EMBD
    yield "token_embd.weight", _normal(seed, "token_embd", (n_vocab, n_embd), std_embd), True
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        yield p + "attn_norm.weight", _norm_weight(seed, p + "attn_norm", n_embd), False
        yield p + "attn_q.weight", _normal(seed, p + "attn_q", (n_embd_q, n_embd), STD_PROJ), True
        yield p + "attn_k.weight", _normal(seed, p + "attn_k", (n_embd_k, n_embd), STD_PROJ), True
        yield p + "attn_v.weight", _normal(seed, p + "attn_v", (n_embd_k, n_embd), STD_PROJ), True
        if arch == "qwen2":
            yield p + "attn_q.bias", _normal(seed, p + "attn_q.bias", (n_embd_q,), STD_BIAS), False
            yield p + "attn_k.bias", _normal(seed, p + "attn_k.bias", (n_embd_k,), STD_BIAS), False
            yield p + "attn_v.bias", _normal(seed, p + "attn_v.bias", (n_embd_k,), STD_BIAS), False
        yield p + "attn_output.weight", _normal(seed, p + "attn_output", (n_embd, n_embd_q), STD_PROJ), True
        yield p + "ffn_norm.weight", _norm_weight(seed, p + "ffn_norm", n_embd), False
        yield p + "ffn_gate.weight", _normal(seed, p + "ffn_gate", (n_ff, n_embd), STD_PROJ), True
        yield p + "ffn_up.weight", _normal(seed, p + "ffn_up", (n_ff, n_embd), STD_PROJ), True
        yield p + "ffn_down.weight", _normal(seed, p + "ffn_down", (n_embd, n_ff), STD_PROJ), True
    yield "output_norm.weight", _norm_weight(seed, "output_norm", n_embd), False
    if not hp["tied"]:
        yield "output.weight", _normal(seed, "output", (n_vocab, n_embd), STD_OUT), True


def hparams(arch: str, wtype: str, seed: int = 0, **dims) -> dict:
    """Resolve the hyperparameters write_model would use (no file written)."""
    if arch not in ARCHS:
        raise ValueError(f"unsupported arch {arch!r}; expected one of {ARCHS}")
    wtype = wtype.upper()
    if wtype not in WTYPES:
        raise ValueError(f"unsupported weight type {wtype!r}; expected one of {WTYPES}")
    unknown = set(dims) - set(DEFAULT_DIMS) - {"head_dim"}
    if unknown:
        raise ValueError(f"unknown dims {sorted(unknown)}")
    hp = dict(DEFAULT_DIMS)
    hp.update(dims)
    hp["head_dim"] = dims.get("head_dim", hp["n_embd"] // hp["n_head"])
    hp.update(arch=arch, wtype=wtype, seed=seed, n_rot=hp["head_dim"])
    if wtype.endswith("_K") and (hp["n_embd"] % QK_K or hp["n_ff"] % QK_K or
                                 (hp["head_dim"] * hp["n_head"]) % QK_K):
        raise ValueError("k-quant weights need every row length to be a multiple of 256")
    if hp["n_head"] % hp["n_head_kv"]:
        raise ValueError("n_head must be a multiple of n_head_kv")
    if arch == "llama":
        hp.update(tokenizer="llama", bos_id=1, eos_id=2, unk_id=0, add_bos=True)
    else:
        base = hp["n_vocab"] - len(GPT2_SPECIALS)
        hp.update(tokenizer="gpt2", bos_id=base, eos_id=base + 2, pad_id=base, add_bos=False)
    return hp


def write_model(path, arch: str, wtype: str, seed: int = 0, **dims) -> dict:
    """Write a tiny deterministic GGUF to `path`; returns the hyperparameter dict.

    dims: n_embd, n_ff, n_head, n_head_kv, n_layer, n_vocab, n_ctx, head_dim,
    rms_eps, rope_freq_base, tied (no `output` tensor: logits use token_embd).
    """
    hp = hparams(arch, wtype, seed, **dims)
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(f"pyrt-synthetic-{arch}-{hp['wtype'].lower()}{'-tied' if hp['tied'] else ''}")
    w.add_block_count(hp["n_layer"])
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_rope_freq_base(hp["rope_freq_base"])
    w.add_rope_dimension_count(hp["n_rot"])
    w.add_vocab_size(hp["n_vocab"])
    w.add_file_type(int(FILE_TYPE[hp["wtype"]]))
    if arch == "llama":
        tokens, scores, types = spm_vocab(hp["n_vocab"])
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(hp["bos_id"])
        w.add_eos_token_id(hp["eos_id"])
        w.add_unk_token_id(hp["unk_id"])
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    else:
        tokens, merges, types = gpt2_vocab(hp["n_vocab"])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(hp["bos_id"])
        w.add_eos_token_id(hp["eos_id"])
        w.add_pad_token_id(hp["pad_id"])
        w.add_add_bos_token(False)
        w.add_chat_template(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
            "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    for name, arr, is_matrix in model_tensors(arch, seed, hp):
        if is_matrix:
            data, raw = encode(arr, hp["wtype"])
            if raw is None:
                w.add_tensor(name, data)
            else:
                w.add_tensor(name, data, raw_dtype=raw)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hp


def write_all(outdir, seed: int = 0) -> dict:
    """Write every VARIANTS model into outdir; returns {name: (path, hparams)}."""
    os.makedirs(outdir, exist_ok=True)
    out = {}
    for name, arch, wtype, extra in VARIANTS:
        path = os.path.join(outdir, name + ".gguf")
        out[name] = (path, write_model(path, arch, wtype, seed=seed, **extra))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name, (path, _) in write_all(args.outdir, args.seed).items():
        print(f"{path}  {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
