"""The kernel package's source stamp and the Numba cache locator that keys every cached kernel on it.

Numba checks a cached function's freshness against its own file only, so a kernel inlining a helper from a
sibling file would load stale machine code after the helper changed. Here every function defined in this
package is stamped with one hash over the bytes of all its .py files: an edit anywhere recompiles the
package on the next run, unchanged files load from the cache. Imports numba only; `__init__` installs it
before any kernel module is imported.
"""

from __future__ import annotations

import hashlib
import os

from numba.core import caching


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
