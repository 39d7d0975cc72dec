"""Record llama.cpp goldens (llama-cpp-python) for the synthetic deepseek2 models (tools/synthetic_deepseek2.py).

Same contents as tools/make_goldens.py: logits of a fixed 48-id sequence, 64 greedy ids from a fixed
8-id prompt, the file's SHA-256, the writer's parameters (manifest.json). Imports the tools only,
never pyrt. Usage: `python tools/make_deepseek_goldens.py [-o DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402
import synthetic_deepseek2 as sd  # noqa: E402


def make(outdir, models_dir) -> dict:
    os.makedirs(outdir, exist_ok=True)
    written = sd.write_all(models_dir, extra=False)
    manifest = {
        "oracle": mg.llama_cpp_info(),
        "settings": {
            "n_ctx": mg.N_CTX, "n_batch": mg.N_BATCH, "n_ubatch": mg.N_BATCH, "n_threads": mg.N_THREADS,
            "type_k": "f16", "type_v": "f16", "flash_attn": False, "use_extra_bufts": False,
            "logit_ids": f"BOS + {mg.N_LOGIT_IDS - 1} ids from default_rng({mg.IDS_SEED}) over ordinary ids",
            "prompt": f"BOS + {mg.N_PROMPT - 1} ids from default_rng({mg.PROMPT_SEED}) over ordinary ids",
            "n_gen": mg.N_GEN, "greedy": "argmax of the last row, fed back, EOS ignored",
        },
        "models": {},
    }
    for name, (path, hp) in written.items():
        ids = mg.fixed_ids(hp, mg.N_LOGIT_IDS, mg.IDS_SEED)
        prompt = mg.fixed_ids(hp, mg.N_PROMPT, mg.PROMPT_SEED)
        llm = mg.load(path)
        logits = mg.eval_logits(llm, ids)
        gen, gen_margin = mg.greedy(llm, prompt, mg.N_GEN)
        del llm
        if not np.isfinite(logits).all():
            raise RuntimeError(f"{name}: llama.cpp produced non-finite logits")
        manifest["models"][name] = {
            "file": os.path.basename(path), "sha256": mg.sha256_file(path), "size": os.path.getsize(path),
            "hparams": hp, "logits_std": float(logits.std()),
            "min_margin_logits": float(min(mg.margin(r) for r in logits)),
            "min_margin_greedy": float(min(gen_margin)), "gen_distinct": len(set(gen)),
        }
        np.savez_compressed(os.path.join(outdir, name + ".npz"), ids=np.array(ids, dtype=np.int32), logits=logits,
                            prompt=np.array(prompt, dtype=np.int32), gen_ids=np.array(gen, dtype=np.int32),
                            gen_margin=np.array(gen_margin, dtype=np.float32))
        print(f"{name:20s} sha={manifest['models'][name]['sha256'][:12]} logit_std={logits.std():.3f} "
              f"min_margin={manifest['models'][name]['min_margin_logits']:.4f} gen[:8]={gen[:8]}", flush=True)
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--outdir", default=os.path.join(here, "..", "tests", "data", "goldens_deepseek2"))
    ap.add_argument("--models-dir", default=None)
    args = ap.parse_args(argv)
    if args.models_dir:
        make(args.outdir, args.models_dir)
    else:
        with tempfile.TemporaryDirectory() as d:
            make(args.outdir, d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
