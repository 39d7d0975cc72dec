"""`pyrt serve`: flags (llama-server's names) and the runner. Thin: the server is pyrt.server, the
engine pyrt.engine."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import PyrtError


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-np", "--parallel", type=int, default=4,
                   help="parallel sequences (slots) sharing the KV cache of -c cells (default: 4)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("-a", "--alias", default=None, help="model name in the API (default: the file name)")
    p.add_argument("--api-key", default=None,
                   help="API key(s), comma-separated: clients send 'Authorization: Bearer KEY' or 'X-Api-Key'")
    p.add_argument("--api-key-file", default=None, help="file with one API key per line")
    p.add_argument("--slot-save-path", default=None, help="folder for /slots/{id}?action=save|restore files")
    p.add_argument("--chat-template", default=None,
                   help="chat template: Jinja text, a file, or a built-in name (chatml, gemma); "
                        "default: the file's tokenizer.chat_template")
    p.add_argument("-to", "--timeout", type=float, default=600.0,
                   help="per-request time limit in seconds, from arrival (default: 600)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for a slot before new ones get 503 (default: 256)")
    p.add_argument("--max-body-size", type=int, default=8 << 20,
                   help="largest request body in bytes (default: 8 MiB; larger gets 413)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds in-flight requests get to finish after SIGTERM/SIGINT (default: 10)")
    p.add_argument("-cram", "--cache-ram", type=int, default=0, metavar="MiB",
                   help="host RAM for prefixes evicted from the KV cache, restored when a prompt starts with "
                        "one (default: 0 = off)")
    p.add_argument("-dt", "--defrag-thold", type=float, default=0.1,
                   help="defragment the KV cache above this free fraction (default: 0.1; < 0 = off)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")
    r = p.add_argument_group("Ray Serve (the ray extra)")
    r.add_argument("--ray", action="store_true",
                   help="serve --replicas engines on a Ray cluster behind one endpoint, routed by session and cached "
                        "prefix (-t: threads per replica; --slot-save-path on shared storage moves sessions)")
    r.add_argument("--replicas", type=int, default=2, help="engines with --ray (default: 2)")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join with --ray ('auto': the one `ray start` runs here; default: start a "
                        "local one)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: warning)")


def _api_keys(a: argparse.Namespace) -> list[str]:
    keys = [k.strip() for k in (a.api_key or "").split(",") if k.strip()]
    if a.api_key_file:
        try:
            with open(a.api_key_file, encoding="utf-8") as fh:
                keys += [line.strip() for line in fh if line.strip()]
        except OSError as e:
            raise PyrtError(f"cannot read --api-key-file {a.api_key_file}: {e.strerror}") from None
    return keys


def cmd_serve(a: argparse.Namespace, model_path: str) -> int:
    try:
        from .server.app import ServerConfig, ServerState, run
    except ImportError as e:
        raise PyrtError(f"pyrt serve needs the server extra ({e.name} is missing): "
                        f"pip install -e \".[server]\"") from None
    if a.cache_ram < 0:
        raise PyrtError("--cache-ram must be >= 0 (MiB)")
    if a.parallel < 1 or a.parallel > 64:
        raise PyrtError("-np must be in [1, 64]")
    if a.slot_save_path is not None and not os.path.isdir(a.slot_save_path):
        raise PyrtError(f"--slot-save-path {a.slot_save_path} is not a directory")
    cfg = ServerConfig(model_alias=a.alias or os.path.basename(model_path), api_keys=_api_keys(a),
                       slot_save_path=a.slot_save_path, chat_template=a.chat_template,
                       timeout_s=a.timeout if a.timeout > 0 else None, max_body_bytes=a.max_body_size,
                       shutdown_grace_s=a.shutdown_grace)

    def loader():
        from .cli import device_of_args, mmap_of_args
        from .engine import Engine
        from .runtime.llm import load
        def load_llm():
            return load(model_path, n_ctx=a.ctx_size, n_batch=a.batch_size, n_ubatch=a.ubatch_size,
                        n_threads=a.threads, type_k=a.cache_type_k, type_v=a.cache_type_v, use_mmap=mmap_of_args(a),
                        warmup=not a.no_warmup, n_seq_max=a.parallel, defrag_thold=a.defrag_thold, mla=a.mla_use,
                        swa_full=a.swa_full, device=device_of_args(a), swa_per_seq=True)

        eng = Engine.launch(load_llm, a.parallel, max_queue=a.max_queue, cache_ram_bytes=a.cache_ram << 20)
        llm = eng.llm
        print(f"pyrt serve: {llm.model.hp.arch}, n_ctx = {llm.n_ctx} cells shared by {a.parallel} slots, "
              f"n_batch = {llm.ctx.n_batch}, n_ubatch = {llm.ctx.n_ubatch}, n_threads = {llm.n_threads}",
              file=sys.stderr, flush=True)
        print(f"pyrt serve: {llm.file.buffer_report()}", file=sys.stderr, flush=True)
        return eng

    if a.ray:
        return _serve_ray(a, model_path, cfg)
    state = ServerState(cfg, loader)
    print(f"pyrt serve: loading {model_path}; http://{a.host}:{a.port} answers /health with 503 until ready",
          file=sys.stderr, flush=True)
    return run(state, a.host, a.port, log_level=a.log_level)


def _serve_ray(a: argparse.Namespace, model_path: str, cfg) -> int:
    try:
        from .server import ray as pyrt_ray
    except ImportError as e:
        raise PyrtError(f"pyrt serve --ray needs the ray extra ({e.name} is missing): pip install -e \".[ray]\"") \
            from None
    if not 1 <= a.replicas <= 1024:
        raise PyrtError("--replicas must be in [1, 1024]")
    from .cli import mmap_of_args
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.replicas)
    use_mmap = mmap_of_args(a)
    if use_mmap is None:
        use_mmap = True  # replicas on one host share the page cache's copy instead of each reading its own
    if a.slot_save_path is None:
        print("pyrt serve --ray: no --slot-save-path: sessions stick to their replica but do not move when it "
              "goes away", file=sys.stderr, flush=True)
    app = pyrt_ray.deployment(
        model_path, replicas=a.replicas, threads=threads, n_parallel=a.parallel, n_ctx=a.ctx_size,
        load_kw=dict(n_batch=a.batch_size, n_ubatch=a.ubatch_size, type_k=a.cache_type_k, type_v=a.cache_type_v,
                     use_mmap=use_mmap, warmup=not a.no_warmup, defrag_thold=a.defrag_thold, mla=a.mla_use,
                     swa_full=a.swa_full, swa_per_seq=True),
        slot_save_path=a.slot_save_path, chat_template=a.chat_template, alias=cfg.model_alias,
        api_keys=cfg.api_keys, timeout_s=cfg.timeout_s, max_queue=a.max_queue, cache_ram_mib=a.cache_ram,
        max_body_bytes=a.max_body_size)
    print(f"pyrt serve --ray: {a.replicas} replicas of {model_path}, {threads} threads and {a.parallel} slots each",
          file=sys.stderr, flush=True)
    return pyrt_ray.serve_forever(app, a.host, a.port, address=a.address,
                                  num_cpus=None if a.address else threads * a.replicas)
