"""The kernels compiled for a CPU without AVX2/F16C (NUMBA_CPU_NAME=x86-64, a cache directory of its own)
agree with the same kernels compiled for this machine: every weight format (dequant bit-exact, matmuls to
f32 rounding: FMA contraction and vector widths differ) and every cache type (stored bytes and decoded
values bit-exact, attention to f32 rounding). Both sides run the same script in a subprocess."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from gguf import GGMLQuantizationType as T, quants
    from pyrt._kernels import simd, dots_q8_0
    from pyrt.formats.cache_types import CACHE_TYPES
    from pyrt.formats.qtypes import SUPPORTED_TYPES
    from pyrt.kv.cache import KVCache
    from pyrt.ops import matmul as mm
    from pyrt.ops.attention import attention
    from test_quants_k import rand_blocks

    rng = np.random.default_rng(7)
    n_in, n_out = 512, 24
    xf = rng.standard_normal((n_in * n_out,)).astype(np.float32).reshape(n_out, n_in)
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    out = {"features": np.array([simd.HAS_AVX2, simd.HAS_F16C, dots_q8_0.DOT_MODE == "generic"])}
    for qt in SUPPORTED_TYPES.values():
        t = qt.ggml_type
        if qt.name == "F32":
            raw = xf.view(np.uint8)
        elif qt.name == "BF16":
            raw = (xf.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        elif qt.name in ("F16", "Q8_0", "Q4_0", "Q5_0"):
            raw = quants.quantize(xf, T(t))
        else:
            raw = rand_blocks(qt.name.lower(), n_out, n_in, 11)
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(n_out, -1)
        deq = np.empty((n_out, n_in), np.float32)
        qt.kernel("dequant_rows")(deq, raw)
        out["deq_" + qt.name] = deq
        for n_tok in (1, 5):
            out[f"mm{n_tok}_" + qt.name] = mm.matmul(np.ascontiguousarray(x[:n_tok]), raw, t, path="dot")
    n_kv, n_head_kv, n_head, dk = 40, 2, 4, 64
    pos = np.arange(n_kv, dtype=np.int32)
    seq = np.zeros(n_kv, np.int32)
    k = rng.standard_normal((n_kv, n_head_kv * dk)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv * dk)).astype(np.float32)
    q = rng.standard_normal((3, n_head, dk)).astype(np.float32)
    for name in CACHE_TYPES:
        cache = KVCache(1, 64, [n_head_kv * dk], [n_head_kv * dk], name, name, head_dim_k=dk, head_dim_v=dk)
        cells = cache.cells.find_slot(pos, seq)
        cache.store(0, cells, k, v)
        out["k_" + name] = cache.k[0].view(np.uint8)
        out["v_" + name] = cache.v[0].view(np.uint8)
        out["kval_" + name] = cache.k_values(0, cells)
        out["attn_" + name] = attention(q, cache, 0, np.array([10, 25, 39], np.int32), np.zeros(3, np.int32), 0.125)
    np.savez(sys.argv[1], **out)
""")


def _start(tmp_path, tag, **env):
    path = str(tmp_path / f"{tag}.npz")
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), **env)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, path], env=e, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return proc, path


def _result(started):
    proc, path = started
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-4000:]
    return np.load(path)


@pytest.mark.own_cache
def test_portable_kernels_agree_with_simd(tmp_path):
    # Both sides compile at once (pytest itself runs on one core).
    started = [_start(tmp_path, "portable", NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES="",
                      NUMBA_CACHE_DIR=str(tmp_path / "numba-x86-64")),
               _start(tmp_path, "host")]
    try:
        portable, host = [_result(s) for s in started]
    finally:
        for proc, _ in started:
            proc.kill()
    assert not portable["features"][:2].any() and portable["features"][2]  # no AVX2, no F16C, generic dots
    assert sorted(portable.files) == sorted(host.files)
    for key in host.files:
        a, b = host[key], portable[key]
        if key == "features":
            continue
        if key.startswith(("deq_", "k_", "v_", "kval_")):
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), key
        else:
            scale = float(np.abs(a).max())
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-6 * scale, err_msg=key)
