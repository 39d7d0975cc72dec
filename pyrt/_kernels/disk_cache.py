"""The kernel package's source stamp and the Numba cache locator that keys every cached kernel on it; the
rule that a kernel's calls bind inside its own machine code (bind_calls_locally).

Numba checks a cached function's freshness against its own file only, so a kernel inlining a helper from a
sibling file would load stale machine code after the helper changed. Here every function defined in this
package is stamped with one hash over the bytes of all its .py files: an edit anywhere recompiles the
package on the next run, unchanged files load from the cache. Imports numba only; `__init__` installs both
before any kernel module is imported.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings

import llvmlite.binding as ll
from numba.core import caching, codegen, itanium_mangler


def package_stamp(root: str) -> str:
    """sha256 over (relative path, bytes) of every .py file below root, in sorted path order."""
    h = hashlib.sha256()
    paths = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        paths += [os.path.join(d, f) for f in files if f.endswith(".py")]
    for p in sorted(paths):
        h.update(os.path.relpath(p, root).replace(os.sep, "/").encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()


def install(root: str, variant: str = "") -> str:
    """Key the Numba disk cache of every function defined below root on package_stamp(root); returns it.

    A non-empty variant (a setting that changes the generated code) keeps its cache in a subdirectory of its own.
    """
    root = os.path.abspath(root)
    stamp = package_stamp(root)
    prefix = root + os.sep

    class PackageStampLocator(caching._CacheLocator):
        """Delegates where the cache lives to Numba's own locators; replaces the per-file source stamp."""

        def __init__(self, inner):
            self._inner = inner

        def get_cache_path(self):
            path = self._inner.get_cache_path()
            return os.path.join(path, variant) if variant else path

        def get_source_stamp(self):
            return stamp

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        def __getattr__(self, name):
            # whatever else Numba reads of a locator is the inner one's (its warning about a function it cannot
            # cache reads _py_file)
            if name == "_inner":
                raise AttributeError(name)
            return getattr(self._inner, name)

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(prefix):
                return None
            for other in caching.CacheImpl._locator_classes:
                if getattr(other, "pyrt_package_root", None) is not None:
                    continue
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            return None

    PackageStampLocator.pyrt_package_root = root
    classes = caching.CacheImpl._locator_classes
    classes[:] = [c for c in classes if getattr(c, "pyrt_package_root", None) != root]
    classes.insert(0, PackageStampLocator)
    return stamp


# Linkages of the function definitions a library links in from others: linkonce_odr (the callees' modules) and
# weak_odr (parfor gufunc wrappers).
_WEAK = (ll.Linkage.linkonce_any, ll.Linkage.linkonce_odr, ll.Linkage.weak_any, ll.Linkage.weak_odr)


def bind_calls_locally(package: str) -> bool:
    """Rule: a kernel of `package` runs its own library's machine code only, so a kernel loaded from the disk
    cache computes the same bits as in the process that compiled it. Returns whether the rule is in force.

    Numba links each callee's optimized module (and a parfor's gufunc wrapper) into its caller as weak
    (linkonce_odr, weak_odr) copies and optimizes the caller's module again, so a callee's copy inside the
    caller's object can be vectorized, contracted (FMA) and reassociated differently from the callee's own
    library. The JIT's dynamic linker binds a weak definition to the first one loaded: in the compiling
    process, where the callee's library was compiled and loaded first, the caller calls that library; a
    process that loads the caller's object from the cache (and not the callee's) calls the caller's own copy.
    (The mangled names also carry the fastmath flag set in hash order, so which copies share a name varies
    between processes.) Making the linked-in copies internal in every library that defines a function of
    `package`, after optimization and before machine code is emitted, binds each call to the copy in the same
    object in every process (the same code; only the symbol binding changes).

    Patches numba.core.codegen.CPUCodeLibrary._finalize_final_module (wrapped once, for every package
    installed); without that hook the rule is not enforced and a warning says so.
    """
    prefix = "_Z" + itanium_mangler.mangle_identifier(package + ".x")[:-len("1xE")]  # "_ZN4pyrt8_kernels"
    lib = codegen.CPUCodeLibrary
    orig = getattr(lib, "_finalize_final_module", None)
    if orig is None:
        warnings.warn("numba.core.codegen.CPUCodeLibrary has no _finalize_final_module: kernels loaded from the "
                      "disk cache may compute different low bits than freshly compiled ones", RuntimeWarning)
        return False
    prefixes = getattr(orig, "local_binding_prefixes", None)
    if prefixes is None:
        prefixes = set()

        @functools.wraps(orig)
        def _finalize_final_module(self):
            fns = [f for f in self._final_module.functions if not f.is_declaration]
            if any(f.linkage == ll.Linkage.external and f.name.startswith(tuple(prefixes)) for f in fns):
                for f in fns:
                    if f.linkage in _WEAK:
                        f.linkage = "internal"
            return orig(self)

        _finalize_final_module.local_binding_prefixes = prefixes
        lib._finalize_final_module = _finalize_final_module
    prefixes.add(prefix)
    return True


def ready_asm_parser() -> None:
    """Rule: LLVM's native asm parser is initialized before any kernel is compiled or loaded from the disk cache.

    A kernel holding inline asm (the AMX tiles, bf16 conversions) is assembled whenever LLVM emits machine code
    for a module that holds it: when compiled, and also when a cached kernel's module is emitted again in a
    process that loads it (a caller linking it in, a parfor wrapper). Without the parser LLVM aborts the process
    ("Inline asm not supported by this streamer"), so it is readied once, at package import, not at the first
    inline asm this process happens to build."""
    ll.initialize_native_asmparser()
