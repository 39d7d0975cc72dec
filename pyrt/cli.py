"""Command line: `pyrt generate` (and `-cnv` conversations), `pyrt perplexity`, `pyrt info`, `pyrt serve`
(llama.cpp flags).

Thin: everything here is available to library users; this module only parses flags, prints, and turns
every failure into one readable line: `main` is the one error boundary. Exit codes: 0 done, 1 the run
failed (`error: ...`), 2 the command line is wrong (`error: ...`, checked before the model loads, nothing
on stdout), 130 interrupted (Ctrl-C: one line, then the timings so far). PYRT_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from . import __version__
from .errors import InvalidArgumentError, ModelFileError, PyrtError
from .formats.cache_types import CACHE_TYPE_NAMES
from .ops import paths
from .runtime.interrupts import Interrupts

_T_START = time.perf_counter()  # the wall time of a command counts from here (imported first by `pyrt`)

CACHE_TYPES = list(CACHE_TYPE_NAMES)


class UsageError(InvalidArgumentError):
    """A bad command line (exit 2)."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage + message lines and exit 2 -> one line through main
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_mmap_args(p: argparse.ArgumentParser, both: str = "") -> None:
    """--mmap / --no-mmap (one or the other; neither: pyrt reads the file when it fits in half of the available
    memory and maps it otherwise). `mmap_of_args` turns them into use_mmap."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mmap", action="store_true",
                   help=f"{both}map the file (shared, read-only: processes on this host share one copy in the page "
                        "cache) instead of the default (read it into memory when it fits in half of the available "
                        "memory, else map it)")
    g.add_argument("--no-mmap", action="store_true", help=f"{both}read the whole file into memory, never map it")


def mmap_of_args(a: argparse.Namespace) -> bool | None:
    """use_mmap from --mmap / --no-mmap: True, False, or None (automatic)."""
    if getattr(a, "mmap", False):
        return True
    if getattr(a, "no_mmap", False):
        return False
    return None


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
    add_mmap_args(p)
    p.add_argument("-mla", "--mla-use", type=int, default=3, choices=[0, 1, 2, 3],
                   help="MLA attention for DeepSeek2 files: 0 = decompressed K/V cache, 1 = absorbed (FlashMLA), "
                        "2 = absorbed decode + decompressed prompt, 3 = as 2 with FlashMLA decode (default: 3)")
    p.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="on", choices=["on", "off", "auto"],
                   help="flash attention (default: on); pyrt always attends with its flash kernels")
    p.add_argument("--swa-full", action="store_true",
                   help="full-size cache for sliding-window layers (default: they keep only the window, as "
                        "llama.cpp; full size lets any earlier prompt prefix be reused)")
    add_device_args(p)


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and llama.cpp's -ngl (a whole model on the GPU when > 0: pyrt does not split layers)."""
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="where the model runs (default: cpu; cuda needs the [cuda] extra and an NVIDIA GPU)")
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=None, metavar="N",
                   help="as llama.cpp: N > 0 runs all layers on the GPU (= --device cuda), 0 on the CPU")


def device_of_args(a) -> str:
    """The device the command line asks for (--device, else -ngl); UsageError when they disagree."""
    ngl = getattr(a, "n_gpu_layers", None)
    dev = getattr(a, "device", None)
    if ngl is not None and ngl < 0:
        ngl = 1 << 30  # llama.cpp's -ngl -1: all layers
    if dev is None:
        return "cuda" if ngl else "cpu"
    if ngl is not None and (ngl > 0) != (dev == "cuda"):
        raise UsageError(f"pyrt: --device {dev} contradicts -ngl {a.n_gpu_layers}")
    return dev


def _build_parser() -> argparse.ArgumentParser:
    ap = _ArgumentParser(prog="pyrt", description="CPU-first LLM inference on GGUF files.", allow_abbrev=False)
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

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching", allow_abbrev=False)
    _add_model_args(sv, ctx_default=8192)
    from .cli_serve import add_serve_args
    add_serve_args(sv)

    from .cli_bench import add_bench_parser
    add_bench_parser(sub)
    return ap


def _model_path(a: argparse.Namespace) -> str:
    if a.model:
        return a.model
    from .default_model import default_model_path
    a.default_model = default_model_path()
    return a.default_model


# -- the command line, checked before anything is loaded ------------------------------------------------
def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def _check_text(flag: str, text: str | None) -> None:
    """Arguments that are not valid UTF-8 arrive with lone surrogates; refuse them here."""
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UsageError(f"{flag}: the argument is not UTF-8 text (offset {e.start})") from None


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _check_model_args(a: argparse.Namespace) -> None:
    _need(a.ctx_size >= 0, f"-c/--ctx-size must be >= 0 (0 = from the model), got {a.ctx_size}")
    _need(a.batch_size >= 1, f"-b/--batch-size must be >= 1, got {a.batch_size}")
    _need(a.ubatch_size >= 1, f"-ub/--ubatch-size must be >= 1, got {a.ubatch_size}")
    if a.threads is not None and a.threads > 0:  # <= 0: all cores, as llama.cpp
        from numba.core.config import NUMBA_NUM_THREADS
        _need(a.threads <= NUMBA_NUM_THREADS,
              f"-t/--threads {a.threads} exceeds the {NUMBA_NUM_THREADS} threads available (NUMBA_NUM_THREADS)")
    _check_text("-m/--model", a.model)
    if a.model is not None:
        _need(not os.path.isdir(a.model), f"-m/--model {a.model} is a folder, not a GGUF file")


def _check_prompt_cache(path: str, read_only: bool) -> None:
    _need(not os.path.isdir(path), f"--prompt-cache {path} is a folder")
    _need(not os.path.exists(path) or os.path.isfile(path), f"--prompt-cache {path} is not a regular file")
    folder = os.path.dirname(os.path.abspath(path))
    _need(os.path.isdir(folder), f"--prompt-cache {path}: the folder {folder} does not exist")
    if os.path.exists(path):
        _need(os.access(path, os.R_OK), f"--prompt-cache {path}: the file is not readable")
    if not read_only:
        _need(os.access(folder, os.W_OK | os.X_OK),
              f"--prompt-cache {path}: the folder {folder} is not writable (use --prompt-cache-ro to only read it)")


def _check_generate(a: argparse.Namespace) -> None:
    _check_model_args(a)
    _need(a.prompt is None or a.file is None, "use either -p or -f, not both")
    _check_text("-p/--prompt", a.prompt)
    _check_text("-sys/--system-prompt", a.system_prompt)
    if a.file is not None:
        a.prompt, a.file = _read_text(a.file, "prompt file"), None
    _need(a.n_predict >= -1, f"-n/--n-predict must be >= 0 or -1 (until the end), got {a.n_predict}")
    _need(math.isfinite(a.temp), f"--temp must be a finite number, got {a.temp}")
    _need(a.top_k >= 0, f"--top-k must be >= 0 (0 = off), got {a.top_k}")
    _need(0.0 <= a.top_p <= 1.0, f"--top-p must be in [0, 1] (1 = off), got {a.top_p}")
    _need(0.0 <= a.min_p <= 1.0, f"--min-p must be in [0, 1] (0 = off), got {a.min_p}")
    _need(math.isfinite(a.repeat_penalty) and a.repeat_penalty > 0.0,
          f"--repeat-penalty must be > 0 (1 = off), got {a.repeat_penalty}")
    _need(a.repeat_last_n >= -1, f"--repeat-last-n must be >= -1 (0 = off, -1 = context size), got {a.repeat_last_n}")
    _need(-1 <= a.seed < 2**64, f"-s/--seed must be -1 (random) or in [0, 2^64), got {a.seed}")
    _need(a.keep >= -1, f"--keep must be >= -1 (-1 = the whole prompt), got {a.keep}")
    _need(not math.isnan(a.defrag_thold), "-dt/--defrag-thold must be a number")
    _need(not a.prompt_cache_ro or a.prompt_cache is not None, "--prompt-cache-ro needs --prompt-cache FILE")
    if a.prompt_cache is not None:
        _check_text("--prompt-cache", a.prompt_cache)
        _check_prompt_cache(a.prompt_cache, a.prompt_cache_ro)
    a.constraint = _constraint_args(a)
    if a.chat_template is not None:  # compiled now: a broken template fails before the load
        _check_text("--chat-template", a.chat_template)
        from .runtime.chat import ChatTemplate, resolve_template
        try:
            ChatTemplate(resolve_template(a.chat_template), name=f"--chat-template {a.chat_template[:40]!r}")
        except PyrtError as e:
            raise UsageError(str(e)) from None


def _check_perplexity(a: argparse.Namespace) -> None:
    _check_model_args(a)
    _need(a.ctx_size > 0, f"perplexity needs -c/--ctx-size > 0, got {a.ctx_size}")
    _need(a.chunks >= -1 and a.chunks != 0, f"--chunks must be >= 1 or -1 (all), got {a.chunks}")
    a.text = _read_text(a.file, "text file")


def _check_args(a: argparse.Namespace) -> None:
    if a.command == "generate":
        _check_generate(a)
    elif a.command == "perplexity":
        _check_perplexity(a)
    elif a.command in ("info", "serve"):
        _check_model_args(a)


def _cmd_generate(a: argparse.Namespace) -> int:
    from .runtime.llm import load

    prompt = a.prompt if a.prompt is not None else ""  # -f was read by _check_generate
    constraint = a.constraint  # checked by _check_generate
    a.model = _model_path(a)
    a.llm = llm = load(a.model, n_ctx=a.ctx_size, n_batch=a.batch_size, n_ubatch=a.ubatch_size, n_threads=a.threads,
               type_k=a.cache_type_k, type_v=a.cache_type_v, use_mmap=mmap_of_args(a), warmup=not a.no_warmup,
               defrag_thold=a.defrag_thold, mla=a.mla_use, swa_full=a.swa_full, device=device_of_args(a))
    if a.conversation:
        return _conversation(a, llm, prompt)
    llm.check_prompt(llm.tokenize(prompt))  # fail before printing anything
    if constraint:
        constraint = {"constraint": llm.constraint(**constraint)}
    err = sys.stderr
    _print_header(a, llm)
    out = sys.stdout
    if not a.no_display_prompt:
        out.write(prompt)
        out.flush()
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
              "completed the grammar", file=sys.stderr)
    _print_timings(llm)
    return 0


def _print_header(a: argparse.Namespace, llm) -> None:
    """The model and KV lines on stderr (llama.cpp's load log, in short)."""
    err = sys.stderr
    print(f"pyrt: model {a.model}: {llm.model.hp.arch}, {llm.model.hp.n_layer} layers, "
          f"n_vocab = {llm.n_vocab}, n_threads = {llm.n_threads}", file=err)
    print(f"pyrt: {llm.file.buffer_report()}", file=err)
    print(f"pyrt: n_ctx = {llm.n_ctx}, n_batch = {llm.ctx.n_batch}, n_ubatch = {llm.ctx.n_ubatch}", file=err)
    for line in llm.ctx.memory_report().splitlines():
        print(f"pyrt: {line}", file=err)


def _print_timings(llm) -> None:
    """llama.cpp's timing lines, then the wall time of the command split into its parts."""
    print(llm.timings_report(), file=sys.stderr)
    print(llm.total_time_report(time.perf_counter() - _T_START), file=sys.stderr, flush=True)


def _constraint_args(a: argparse.Namespace) -> dict:
    """generate's json_schema / regex / grammar keyword from the flags (at most one of them)."""
    grammar, schema = a.grammar, a.json_schema
    if a.grammar_file is not None:
        _need(grammar is None, "use either --grammar or --grammar-file, not both")
        grammar = _read_text(a.grammar_file, "grammar file")
    if a.json_schema_file is not None:
        _need(schema is None, "use either --json-schema or --json-schema-file, not both")
        schema = _read_text(a.json_schema_file, "JSON schema file")
    given = {k: v for k, v in (("grammar", grammar), ("json_schema", schema), ("regex", a.regex)) if v is not None}
    _need(len(given) <= 1, "--grammar, --json-schema and --regex are mutually exclusive")
    for k, v in given.items():
        _check_text(f"--{k.replace('_', '-')}", v)
    return given


def _n_keep(llm, keep: int, prompt: str) -> int:
    """llama-cli's n_keep: -1 or more than the prompt = the whole prompt; else keep + the BOS token."""
    n_prompt = len(llm.tokenize(prompt))
    if keep < 0 or keep > n_prompt:
        return n_prompt
    bos = llm.tokenizer.bos_id
    return keep + (1 if keep > 0 and bos is not None and llm.tokenize(prompt)[:1] == [bos] else 0)


def _conversation(a: argparse.Namespace, llm, first: str) -> int:
    """llama-cli's conversation display: the header on stderr; on stdout `> ` and the user's turn (echoed
    when stdin is not a terminal, which echoes it itself), the reply, a blank line. A turn that does not fit
    the context is reported on stderr and dropped; the conversation goes on."""
    from .errors import ContextOverflowError
    from .runtime.chat import Conversation

    conv = Conversation(llm, system_prompt=a.system_prompt, chat_template=a.chat_template, raw_if_no_template=True)
    err, out = sys.stderr, sys.stdout
    _print_header(a, llm)
    if conv.raw:
        print("pyrt: warning: the file has no chat template and none was given (--chat-template); "
              "conversation runs as plain completion", file=err)
    else:
        origin = conv.template.origin
        if origin == "file":
            origin = "the file's tokenizer.chat_template"
        elif a.chat_template is None:
            origin += " (the file has none)"
        print(f"pyrt: chat template: {origin}", file=err)
    print("pyrt: conversation mode: one user turn per line; EOF (Ctrl-D) ends it"
          + ("" if a.system_prompt else "; -sys sets a system message"), file=err, flush=True)
    tty = sys.stdin.isatty()
    sampling = dict(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                    repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n, seed=a.seed,
                    ignore_eos=a.ignore_eos, **a.constraint)
    pending = [first] if first else []
    while True:
        if pending:
            line = pending.pop()
            out.write(f"> {line}\n")
        else:
            if tty:
                out.write("> ")
                out.flush()
            line = sys.stdin.readline()
            if not line:  # EOF (Ctrl-D)
                if tty:
                    out.write("\n")
                break
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not tty:
                out.write(f"> {line}\n")
        out.flush()
        n_trimmed = conv.n_trimmed
        try:
            reply = conv.send(line, max_tokens=a.n_predict, **sampling)
        except ContextOverflowError as e:
            print(f"pyrt: turn dropped, it does not fit the context: {e}", file=err, flush=True)
            out.write("\n")
            continue
        if conv.n_trimmed > n_trimmed:
            print(f"pyrt: the conversation outgrew the context (n_ctx = {llm.n_ctx}): its oldest "
                  f"{conv.n_trimmed - n_trimmed} exchange(s) were dropped", file=err, flush=True)
        for piece in reply:
            out.write(piece)
            out.flush()
        out.write("\n\n")
        out.flush()
    out.flush()
    print("", file=err)
    _print_timings(llm)
    return 0


def _cmd_perplexity(a: argparse.Namespace) -> int:
    from .runtime.llm import load
    from .runtime.perplexity import perplexity

    text = a.text  # read by _check_perplexity
    a.model = _model_path(a)
    a.llm = llm = load(a.model, n_ctx=a.ctx_size, n_batch=min(a.batch_size, a.ctx_size), n_ubatch=a.ubatch_size,
               n_threads=a.threads, type_k=a.cache_type_k, type_v=a.cache_type_v, use_mmap=mmap_of_args(a),
               mla=a.mla_use, swa_full=a.swa_full, device=device_of_args(a))
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
    _print_timings(llm)
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .info import describe

    print(describe(_model_path(a), n_ctx=a.ctx_size, n_ubatch=a.ubatch_size, type_k=a.cache_type_k,
                   type_v=a.cache_type_v, swa_full=a.swa_full))
    return 0


# -- the error boundary ------------------------------------------------------------------------------
def _say(line: str) -> None:
    """One line on stderr; a stderr that cannot take it is not worth another error."""
    try:
        print(" ".join(line.split("\n")), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """After stdout failed (full device, closed pipe): send the rest to /dev/null, so that the interpreter's
    last flush at exit does not print 'Exception ignored ...' (as the Python docs advise for SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (captured by a test)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class _Stdout:
    """sys.stdout during main: remembers a failed write or flush (full device, I/O error) so that the error
    line can say it was the output, whoever caught the OSError first (argparse swallows them)."""

    def __init__(self, f):
        self._f = f
        self.failed: OSError | None = None

    def _do(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            if not isinstance(e, BrokenPipeError):
                self.failed = self.failed or e
            raise

    def write(self, s):
        return self._do(self._f.write, s)

    def flush(self):
        return self._do(self._f.flush)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _run(argv, a_box: list) -> int:
    ap = _build_parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # --help, --version
        sys.stdout.flush()
        if sys.stdout.failed:
            raise sys.stdout.failed
        return int(e.code or 0)
    a_box.append(a)
    if a.command is None:
        ap.print_help()
        sys.stdout.flush()
        return 2
    _check_args(a)
    try:
        paths.current()  # PYRT_PATHS is checked with the command line, before anything loads
    except InvalidArgumentError as e:
        raise UsageError(str(e)) from None
    if a.command == "generate":
        rc = _cmd_generate(a)
    elif a.command == "info":
        rc = _cmd_info(a)
    elif a.command == "perplexity":
        rc = _cmd_perplexity(a)
    elif a.command == "serve":
        from .cli_serve import cmd_serve
        rc = cmd_serve(a, _model_path(a))
    elif a.command == "bench":
        from .cli_bench import cmd_bench
        rc = cmd_bench(a)
    else:
        rc = 2
    sys.stdout.flush()  # a full device shows here, inside the boundary
    return rc


def _caused_by_interrupt(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in e's chain of causes: Python wraps one raised inside some hooks (a
    descriptor's __set_name__ while an import creates a class) in another exception."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    debug = os.environ.get("PYRT_DEBUG", "") not in ("", "0")
    ints = Interrupts().install()
    a_box: list = []
    real_stdout = sys.stdout
    out = sys.stdout = _Stdout(real_stdout)

    def interrupted() -> int:
        ints.stop()
        _say("")
        _say(f"pyrt: interrupted (Ctrl-C) after {time.perf_counter() - t0:.2f} s")
        llm = getattr(a_box[0], "llm", None) if a_box else None
        if llm is not None:
            for line in llm.timings_report().splitlines():
                _say(line)
        return 130

    try:
        return _run(argv, a_box)
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:  # stdout closed (piped into head): not an error of ours
        _silence_stdout()
        return 0
    except Exception as e:
        if _caused_by_interrupt(e):
            return interrupted()
        ints.stop()
        if isinstance(e, UsageError):
            _say(f"error: {e}")
            return 2
        if debug:
            import traceback
            traceback.print_exc()
        if isinstance(e, PyrtError):
            msg = str(e)
            default = getattr(a_box[0], "default_model", None) if a_box else None
            if isinstance(e, ModelFileError) and default:
                msg += f" (this is the default model in the cache: delete {default} and run again to rebuild it)"
        elif isinstance(e, OSError) and e is out.failed:
            msg = f"cannot write the output (stdout): {e.strerror or e}"
        elif isinstance(e, OSError):
            msg = f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
        elif isinstance(e, MemoryError):
            msg = "out of memory"
        else:
            msg = f"internal error: {type(e).__name__}: {e}" + ("" if debug else " (PYRT_DEBUG=1 shows the traceback)")
        _say(f"error: {msg}")
        return 1
    finally:
        ints.uninstall()
        sys.stdout = real_stdout
        if out.failed is not None:
            _silence_stdout()


if __name__ == "__main__":
    sys.exit(main())
