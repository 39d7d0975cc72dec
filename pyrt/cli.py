"""Command line: `pyrt generate` (and `-cnv` conversations), `pyrt perplexity`, `pyrt info` (llama.cpp flags).

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

CACHE_TYPES = ["f32", "f16", "bf16", "q8_0", "q8_KV"]


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
    p.add_argument("-mla", "--mla-use", type=int, default=3, choices=[0, 1, 2, 3],
                   help="MLA attention for DeepSeek2 files: 0 = decompressed K/V cache, 1 = absorbed (FlashMLA), "
                        "2 = absorbed decode + decompressed prompt, 3 = as 2 with FlashMLA decode (default: 3)")
    p.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="on", choices=["on", "off", "auto"],
                   help="flash attention (default: on); pyrt always attends with its flash kernels")
    p.add_argument("--swa-full", action="store_true",
                   help="full-size cache for sliding-window layers (default: they keep only the window, as "
                        "llama.cpp; full size lets any earlier prompt prefix be reused)")


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
    g.add_argument("-cnv", "--conversation", action="store_true",
                   help="conversation mode: read user turns from stdin (one per line, EOF ends), reply with the "
                        "chat template; -p is the first user turn")
    g.add_argument("--chat-template", default=None,
                   help="chat template: Jinja text, a file, or a built-in name (chatml, gemma); "
                        "default: the file's tokenizer.chat_template")
    g.add_argument("-sys", "--system-prompt", default=None, help="system message of the conversation (-cnv)")
    g.add_argument("-dt", "--defrag-thold", type=float, default=0.1,
                   help="defragment the KV cache when more than this fraction of its scanned cells is free "
                        "(default: 0.1, as llama.cpp mainline; < 0 = off)")
    g.add_argument("--context-shift", action="store_true",
                   help="when the context is full, drop the oldest half of the tokens after --keep and go on")
    g.add_argument("--keep", type=int, default=0,
                   help="tokens of the prompt kept by a context shift (default: 0, -1 = all; the BOS token "
                        "is kept too, as llama-cli)")
    g.add_argument("--prompt-cache", default=None, metavar="FILE",
                   help="file to cache the prompt's KV state in, reused by later runs with the same prefix")
    g.add_argument("--prompt-cache-ro", action="store_true",
                   help="use --prompt-cache without updating the file")
    g.add_argument("--grammar", default=None, metavar="GRAMMAR",
                   help="constrain the output by a grammar: llama.cpp GBNF or Lark (needs the grammar extra)")
    g.add_argument("--grammar-file", default=None, metavar="FILE", help="read --grammar from a file")
    g.add_argument("-j", "--json-schema", default=None, metavar="SCHEMA",
                   help="constrain the output to JSON valid under this JSON Schema (text; needs the grammar extra)")
    g.add_argument("-jf", "--json-schema-file", default=None, metavar="FILE", help="read --json-schema from a file")
    g.add_argument("--regex", default=None, metavar="REGEX", help="constrain the output to match this regex")

    pp = sub.add_parser("perplexity", help="perplexity of a text file (llama-perplexity's method)",
                        allow_abbrev=False)
    _add_model_args(pp, ctx_default=512)
    pp.add_argument("-f", "--file", required=True, help="text file to score")
    pp.add_argument("--chunks", type=int, default=-1, help="score at most this many chunks (default: -1 = all)")

    i = sub.add_parser("info", help="describe a GGUF file and the memory a context takes", allow_abbrev=False)
    _add_model_args(i)

    from .cli_bench import add_bench_parser
    add_bench_parser(sub)
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
    constraint = _constraint_args(a)
    a.model = _model_path(a)
    llm = load(a.model, n_ctx=a.ctx_size, n_batch=a.batch_size, n_ubatch=a.ubatch_size, n_threads=a.threads,
               type_k=a.cache_type_k, type_v=a.cache_type_v, use_mmap=not a.no_mmap, warmup=not a.no_warmup,
               defrag_thold=a.defrag_thold, mla=a.mla_use, swa_full=a.swa_full)
    if a.conversation:
        return _conversation(a, llm, prompt)
    llm.check_prompt(llm.tokenize(prompt))  # fail before printing anything
    if constraint:
        constraint = {"constraint": llm.constraint(**constraint)}
    err = sys.stderr
    print(f"pyrt: model {a.model}: {llm.model.hp.arch}, {llm.model.hp.n_layer} layers, "
          f"n_vocab = {llm.n_vocab}, n_threads = {llm.n_threads}", file=err)
    print(f"pyrt: n_ctx = {llm.n_ctx}, n_batch = {llm.ctx.n_batch}, n_ubatch = {llm.ctx.n_ubatch}", file=err)
    for line in llm.ctx.memory_report().splitlines():
        print(f"pyrt: {line}", file=err)
    out = sys.stdout
    if not a.no_display_prompt:
        out.write(prompt)
        out.flush()
    t0 = time.perf_counter()
    for piece in llm.generate(prompt, max_tokens=a.n_predict, temperature=a.temp, top_k=a.top_k, top_p=a.top_p,
                              min_p=a.min_p, repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n,
                              seed=a.seed, ignore_eos=a.ignore_eos, context_shift=a.context_shift,
                              n_keep=_n_keep(llm, a.keep, prompt), prompt_cache=a.prompt_cache,
                              prompt_cache_ro=a.prompt_cache_ro, **constraint):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    print("", file=err)
    if constraint and llm.last_finish_reason == "length":
        print("pyrt: warning: generation ended at the token limit or a full context before the output "
              "completed the grammar", file=err)
    print(llm.timings_report(), file=err)
    print(f"pyrt: {'total time':>16} = {(time.perf_counter() - t0) * 1000:10.2f} ms", file=err)
    return 0


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise PyrtError(f"cannot read {what} file {path}: {e.strerror}")


def _constraint_args(a: argparse.Namespace) -> dict:
    """generate's json_schema / regex / grammar keyword from the flags (at most one of them)."""
    grammar, schema = a.grammar, a.json_schema
    if a.grammar_file is not None:
        if grammar is not None:
            raise PyrtError("use either --grammar or --grammar-file, not both")
        grammar = _read_text(a.grammar_file, "grammar")
    if a.json_schema_file is not None:
        if schema is not None:
            raise PyrtError("use either --json-schema or --json-schema-file, not both")
        schema = _read_text(a.json_schema_file, "JSON schema")
    given = {k: v for k, v in (("grammar", grammar), ("json_schema", schema), ("regex", a.regex)) if v is not None}
    if len(given) > 1:
        raise PyrtError("--grammar, --json-schema and --regex are mutually exclusive")
    return given


def _n_keep(llm, keep: int, prompt: str) -> int:
    """llama-cli's n_keep: -1 or more than the prompt = the whole prompt; else keep + the BOS token."""
    n_prompt = len(llm.tokenize(prompt))
    if keep < 0 or keep > n_prompt:
        return n_prompt
    bos = llm.tokenizer.bos_id
    return keep + (1 if keep > 0 and bos is not None and llm.tokenize(prompt)[:1] == [bos] else 0)


def _conversation(a: argparse.Namespace, llm, first: str) -> int:
    from .runtime.chat import Conversation

    conv = Conversation(llm, system_prompt=a.system_prompt, chat_template=a.chat_template, raw_if_no_template=True)
    err, out = sys.stderr, sys.stdout
    if conv.raw:
        print("pyrt: warning: the file has no chat template and none was given (--chat-template); "
              "conversation runs as plain completion", file=err)
    tty = sys.stdin.isatty()
    sampling = dict(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                    repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n, seed=a.seed,
                    ignore_eos=a.ignore_eos, **_constraint_args(a))
    pending = [first] if first else []
    while True:
        if pending:
            line = pending.pop()
        else:
            if tty:
                out.write("> ")
                out.flush()
            line = sys.stdin.readline()
            if not line:  # EOF (Ctrl-D)
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
        for piece in conv.send(line, max_tokens=a.n_predict, **sampling):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
    if tty:
        out.write("\n")
    print(llm.timings_report(), file=err)
    return 0


def _cmd_perplexity(a: argparse.Namespace) -> int:
    from .runtime.llm import load
    from .runtime.perplexity import perplexity

    try:
        with open(a.file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise PyrtError(f"cannot read text file {a.file}: {e.strerror}")
    if a.ctx_size <= 0:
        raise PyrtError("perplexity needs --ctx-size > 0")
    a.model = _model_path(a)
    llm = load(a.model, n_ctx=a.ctx_size, n_batch=min(a.batch_size, a.ctx_size), n_ubatch=a.ubatch_size,
               n_threads=a.threads, type_k=a.cache_type_k, type_v=a.cache_type_v, use_mmap=not a.no_mmap,
               mla=a.mla_use, swa_full=a.swa_full)
    err, out = sys.stderr, sys.stdout
    print(f"perplexity: calculating perplexity over chunks of n_ctx = {llm.n_ctx}, batch_size = {llm.ctx.n_batch}",
          file=err)
    t0 = time.perf_counter()

    def progress(i: int, ppl: float) -> None:
        out.write(f"[{i}]{ppl:.4f},")
        out.flush()

    res = perplexity(llm, text, n_ctx=llm.n_ctx, n_chunks=a.chunks, n_batch=llm.ctx.n_batch, callback=progress)
    out.write("\n")
    print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_err:.5f}", file=out)
    out.flush()
    print(f"perplexity: {res.n_chunks} chunks, {res.count} scored tokens of {res.n_tokens}, "
          f"{time.perf_counter() - t0:.2f} s", file=err)
    print(llm.timings_report(), file=err)
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .info import describe

    print(describe(_model_path(a), n_ctx=a.ctx_size, n_ubatch=a.ubatch_size, type_k=a.cache_type_k,
                   type_v=a.cache_type_v, swa_full=a.swa_full))
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
        if a.command == "perplexity":
            return _cmd_perplexity(a)
        if a.command == "bench":
            from .cli_bench import cmd_bench
            return cmd_bench(a)
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
