"""Command line: `pyrt generate`, `pyrt info` (llama.cpp-style flags).

Thin: everything here is available to library users; this module only parses flags, prints, and turns
pyrt errors into one readable line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import PyrtError

CACHE_TYPES = ["f32", "f16", "bf16", "q8_0"]


def _add_model_args(p: argparse.ArgumentParser, ctx_default: int = 4096) -> None:
    p.add_argument("-m", "--model", default=None,
                   help="path to a GGUF file (default: Gemma 3 270M from the [model] extra)")
    p.add_argument("-c", "--ctx-size", type=int, default=ctx_default,
                   help=f"context size in tokens (default: {ctx_default}, 0 = from the model)")
    p.add_argument("-b", "--batch-size", type=int, default=2048, help="logical batch size (default: 2048)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="physical batch size (default: 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("-ctk", "--cache-type-k", default="f16", choices=CACHE_TYPES, help="KV cache type for K")
    p.add_argument("-ctv", "--cache-type-v", default="f16", choices=CACHE_TYPES, help="KV cache type for V")
    p.add_argument("--no-mmap", action="store_true", help="read the whole file into memory instead of mapping it")


def _build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyrt", description="CPU-first LLM inference on GGUF files.",
                                 allow_abbrev=False)
    ap.add_argument("--version", action="version", version=f"pyrt {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate text from a prompt", allow_abbrev=False)
    _add_model_args(g)
    g.add_argument("-p", "--prompt", default=None, help="prompt text")
    g.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    g.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="tokens to generate (default: -1 = until end of generation or a full context)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature (default: 0.8; <= 0 = greedy)")
    g.add_argument("--top-k", type=int, default=40, help="top-k sampling (default: 40, 0 = off)")
    g.add_argument("--top-p", type=float, default=0.95, help="top-p sampling (default: 0.95, 1.0 = off)")
    g.add_argument("--min-p", type=float, default=0.05, help="min-p sampling (default: 0.05, 0.0 = off)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (default: 1.0 = off)")
    g.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens considered by the penalty (default: 64, 0 = off, -1 = context size)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed (default: -1 = random)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")
    g.add_argument("--no-display-prompt", action="store_true", help="do not print the prompt before the output")
    g.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")

    i = sub.add_parser("info", help="describe a GGUF file and the memory a context takes", allow_abbrev=False)
    _add_model_args(i)
    return ap


def _model_path(a: argparse.Namespace) -> str:
    if a.model:
        return a.model
    from .default_model import default_model_path
    return default_model_path()


def _cmd_generate(a: argparse.Namespace) -> int:
    from .runtime.llm import load

    if a.prompt is not None and a.file is not None:
        raise PyrtError("use either -p or -f, not both")
    if a.file is not None:
        try:
            with open(a.file, encoding="utf-8") as fh:
                prompt = fh.read()
        except OSError as e:
            raise PyrtError(f"cannot read prompt file {a.file}: {e.strerror}")
    else:
        prompt = a.prompt if a.prompt is not None else ""
    a.model = _model_path(a)
    llm = load(a.model, n_ctx=a.ctx_size, n_batch=a.batch_size, n_ubatch=a.ubatch_size, n_threads=a.threads,
               type_k=a.cache_type_k, type_v=a.cache_type_v, use_mmap=not a.no_mmap, warmup=not a.no_warmup)
    llm.check_prompt(llm.tokenize(prompt))  # fail before printing anything
    err = sys.stderr
    print(f"pyrt: model {a.model}: {llm.model.hp.arch}, {llm.model.hp.n_layer} layers, "
          f"n_vocab = {llm.n_vocab}, n_threads = {llm.n_threads}", file=err)
    print(f"pyrt: n_ctx = {llm.n_ctx}, n_batch = {llm.ctx.n_batch}, n_ubatch = {llm.ctx.n_ubatch}", file=err)
    print(f"pyrt: {llm.ctx.memory_report()}", file=err)
    out = sys.stdout
    if not a.no_display_prompt:
        out.write(prompt)
        out.flush()
    t0 = time.perf_counter()
    for piece in llm.generate(prompt, max_tokens=a.n_predict, temperature=a.temp, top_k=a.top_k, top_p=a.top_p,
                              min_p=a.min_p, repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n,
                              seed=a.seed, ignore_eos=a.ignore_eos):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    print("", file=err)
    print(llm.timings_report(), file=err)
    print(f"pyrt: {'total time':>16} = {(time.perf_counter() - t0) * 1000:10.2f} ms", file=err)
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .info import describe

    print(describe(_model_path(a), n_ctx=a.ctx_size, n_ubatch=a.ubatch_size, type_k=a.cache_type_k,
                   type_v=a.cache_type_v))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = _build_parser()
    a = ap.parse_args(argv)
    if a.command is None:
        ap.print_help()
        return 2
    try:
        if a.command == "generate":
            return _cmd_generate(a)
        if a.command == "info":
            return _cmd_info(a)
    except PyrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed (e.g. piped into head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
