"""Machine and run facts every benchmark result records: CPU, cores, threads, load average, versions,
git commit, model file type; and the process's resident memory from /proc.

Imports no Numba kernels; reads the GGUF metadata through pyrt.io only.
"""

from __future__ import annotations

import os
import platform
import subprocess

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    return _status_mib("VmRSS")


def rss_hwm_mib() -> float | None:
    """Peak resident set of this process (VmHWM), MiB: what sweep-bench's --sweep-memory reports."""
    return _status_mib("VmHWM")


def cpu_model() -> str:
    from ..backends.cpu import cpuinfo_field
    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "?"


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=_ROOT,
                           timeout=5)
        if r.returncode != 0:
            return "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=_ROOT, timeout=5).stdout.strip()
        return r.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def model_facts(path: str) -> dict:
    """Architecture, general.name, file type (llama.cpp's ftype name), size and parameter count."""
    import gguf

    from ..io.gguf_file import GGUFFile
    f = GGUFFile(path, use_mmap=True)  # metadata only: map, do not read
    try:
        ft = f.get("general.file_type")
        try:
            ftype = gguf.LlamaFileType(int(ft)).name.replace("MOSTLY_", "").replace("ALL_", "") if ft is not None \
                else "?"
        except ValueError:
            ftype = f"ftype#{ft}"
        return {"model": os.path.basename(path), "arch": f.architecture, "name": f.get("general.name", "?"),
                "file_type": ftype, "size_mib": round(f.file_size / 2**20, 2),
                "n_params": int(sum(w.n_elements for w in f.tensors.values()))}
    finally:
        f.close()


def machine_facts(n_threads: int | None = None) -> dict:
    import numba
    import numpy

    from .. import __version__
    from .engines import llama_cpp_version
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    from .membw import llc_mib
    llc = llc_mib()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": n_threads,
            "llc_mib": round(llc) if llc else None, "load_avg": load,
            "pyrt": __version__, "commit": git_commit(), "python": platform.python_version(),
            "numba": numba.__version__, "numpy": numpy.__version__, "llama_cpp_python": llama_cpp_version()}
