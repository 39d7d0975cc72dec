"""Build the Cython core (KV cell bookkeeping); everything else is pure Python + Numba."""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("PYRT_CYTHON_DEBUG") == "1"
directives = {
    "language_level": "3",
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "cdivision": not debug,
}

extensions = [
    Extension(
        "pyrt.kv._cells",
        ["pyrt/kv/_cells.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O2"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
