"""Benchmarks behind `pyrt bench`: sweep-bench (PP/TG against cache depth), llama-bench-style pp/tg runs,
llama.cpp beside pyrt through llama-cpp-python, a memory-bandwidth roofline, md/jsonl/csv output, plots.

Surface layer: imports the runtime (pyrt.load) and _kernels; nothing below imports this package.
"""

from .engines import LlamaCppEngine, PyrtEngine, llama_cpp_version, open_engines
from .membw import measure_membw
from .roofline import ModelCosts
from .run import RunResult, run_tests
from .sweep import SweepRow, sweep

__all__ = ["PyrtEngine", "LlamaCppEngine", "open_engines", "llama_cpp_version", "measure_membw", "ModelCosts",
           "SweepRow", "sweep", "RunResult", "run_tests"]
