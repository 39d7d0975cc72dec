"""Record llama.cpp goldens (via llama-cpp-python) for the synthetic models in tools/synthetic.py.

Per model: logits of every position of a fixed 48-id sequence, 64 greedy ids from a fixed
8-id prompt, the model file's SHA-256 and the writer's parameters (manifest.json).
Imports synthetic and llama_cpp only, never pyrt. Usage: `python tools/make_goldens.py [-o DIR]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic  # noqa: E402

N_LOGIT_IDS = 48
N_PROMPT = 8
N_GEN = 64
IDS_SEED = 1234
PROMPT_SEED = 4321
N_CTX = 256
N_BATCH = 64
N_THREADS = 2
LLAMA_CPP_COMMIT_FILE = "/tmp/lcp-src/llama_cpp_python-0.3.36/.git/modules/vendor/llama.cpp/HEAD"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ordinary_ids(hp: dict) -> tuple[int, int]:
    """[lo, hi) range of non-special token ids (bytes and pieces) for the model's vocab."""
    if hp["tokenizer"] == "llama":
        return 3, hp["n_vocab"]  # skip <unk> <s> </s>
    return 0, hp["n_vocab"] - len(synthetic.GPT2_SPECIALS)


def fixed_ids(hp: dict, n: int, seed: int) -> list[int]:
    """BOS followed by n-1 deterministic ordinary ids."""
    lo, hi = ordinary_ids(hp)
    rest = np.random.default_rng(seed).integers(lo, hi, n - 1)
    return [int(hp["bos_id"])] + [int(t) for t in rest]


def _no_extra_buffers():
    # Keep weights in plain CPU buffers: the AMX/repack buffer types are machine-dependent
    # (the AMX path crashed on this VM), the plain ggml CPU path is what every CPU runs.
    import llama_cpp.llama_cpp as C
    orig = C.llama_model_default_params
    if getattr(orig, "_pyrt_patched", False):
        return

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p

    params._pyrt_patched = True
    C.llama_model_default_params = params


def load(path, flash_attn=False):
    import llama_cpp
    _no_extra_buffers()
    return llama_cpp.Llama(
        os.fspath(path), n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=N_THREADS,
        n_threads_batch=N_THREADS, logits_all=True, verbose=False, seed=0, flash_attn=flash_attn)


def eval_logits(llm, ids) -> np.ndarray:
    """Logits of every position: [len(ids), n_vocab] f32, from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def margin(row: np.ndarray) -> float:
    s = np.sort(row)
    return float(s[-1] - s[-2])


def greedy(llm, prompt, n_gen) -> tuple[list[int], list[float]]:
    """Argmax decoding that ignores EOS; returns the ids and each step's top1-top2 margin."""
    llm.reset()
    llm.eval(prompt)
    out, margins = [], []
    for _ in range(n_gen):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = int(row.argmax())
        out.append(tok)
        margins.append(margin(row))
        llm.eval([tok])
    return out, margins


def llama_cpp_info() -> dict:
    import llama_cpp
    commit = "unknown"
    if os.path.exists(LLAMA_CPP_COMMIT_FILE):
        commit = open(LLAMA_CPP_COMMIT_FILE).read().strip()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_commit": commit,
        "llama_version": llama_cpp.llama_cpp.llama_version().decode(),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }


def make(outdir, models_dir, with_fa_check=True) -> dict:
    os.makedirs(outdir, exist_ok=True)
    written = synthetic.write_all(models_dir)
    manifest = {
        "oracle": llama_cpp_info(),
        "settings": {
            "n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_BATCH, "n_threads": N_THREADS,
            "type_k": "f16", "type_v": "f16", "flash_attn": False, "use_extra_bufts": False,
            "logit_ids": f"BOS + {N_LOGIT_IDS - 1} ids from default_rng({IDS_SEED}) over ordinary ids",
            "prompt": f"BOS + {N_PROMPT - 1} ids from default_rng({PROMPT_SEED}) over ordinary ids",
            "n_gen": N_GEN, "greedy": "argmax of the last row, fed back, EOS ignored",
        },
        "models": {},
    }
    for name, (path, hp) in written.items():
        ids = fixed_ids(hp, N_LOGIT_IDS, IDS_SEED)
        prompt = fixed_ids(hp, N_PROMPT, PROMPT_SEED)
        llm = load(path)
        logits = eval_logits(llm, ids)
        gen, gen_margin = greedy(llm, prompt, N_GEN)
        del llm
        if not np.isfinite(logits).all():
            raise RuntimeError(f"{name}: llama.cpp produced non-finite logits")
        entry = {
            "file": os.path.basename(path),
            "sha256": sha256_file(path),
            "size": os.path.getsize(path),
            "writer": {"arch": hp["arch"], "wtype": hp["wtype"], "seed": hp["seed"],
                       "dims": {k: hp[k] for k in sorted(synthetic.DEFAULT_DIMS)}},
            "hparams": hp,
            "logits_std": float(logits.std()),
            "min_margin_logits": float(min(margin(r) for r in logits)),
            "min_margin_greedy": float(min(gen_margin)),
            "gen_distinct": len(set(gen)),
        }
        if with_fa_check:
            fa = eval_logits(load(path, flash_attn=True), ids)
            entry["nmse_flash_attn_vs_off"] = float(((fa - logits) ** 2).sum() / (logits ** 2).sum())
            entry["top1_flash_attn_vs_off"] = float((fa.argmax(1) == logits.argmax(1)).mean())
        np.savez_compressed(
            os.path.join(outdir, name + ".npz"),
            ids=np.array(ids, dtype=np.int32), logits=logits,
            prompt=np.array(prompt, dtype=np.int32), gen_ids=np.array(gen, dtype=np.int32),
            gen_margin=np.array(gen_margin, dtype=np.float32))
        manifest["models"][name] = entry
        print(f"{name:18s} sha={entry['sha256'][:12]} logit_std={entry['logits_std']:.3f} "
              f"min_margin={entry['min_margin_logits']:.4f} gen[:8]={gen[:8]}", flush=True)
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--outdir", default=os.path.join(here, "..", "tests", "data", "goldens"))
    ap.add_argument("--models-dir", default=None, help="where to write the models (default: a temp dir)")
    ap.add_argument("--no-fa-check", action="store_true", help="skip the flash-attention comparison")
    args = ap.parse_args(argv)
    if args.models_dir:
        make(args.outdir, args.models_dir, not args.no_fa_check)
    else:
        with tempfile.TemporaryDirectory() as d:
            make(args.outdir, d, not args.no_fa_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
