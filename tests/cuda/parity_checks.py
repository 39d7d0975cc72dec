"""CUDA backend vs the CPU ops on small shapes: every kernel, the KV store, attention and a whole tiny model.

Runs in the CUDA simulator (tests/test_cuda.py starts it in a subprocess with NUMBA_ENABLE_CUDASIM=1,
which numba must see before it loads) or on a real GPU (`python -m pytest tests/cuda/parity_checks.py`,
what bench/gpu_check.sh runs). Tolerances: the simulator computes in numpy float32 exactly like the
reference decoders, so decoded values are bit-exact there; a GPU may contract a*b-c into an FMA, so on
a device those comparisons allow a few ulps.
"""

import os
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

pytest.importorskip("numba.cuda")

from pyrt.backends import get_backend, to_host  # noqa: E402
from pyrt.formats.qtypes import get_qtype  # noqa: E402
from pyrt.kv.cache import KVCache  # noqa: E402
from pyrt.ops import attention as att  # noqa: E402
from pyrt.ops import basic  # noqa: E402
from pyrt.ops import matmul as mm  # noqa: E402

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if SIM:
    sys.setswitchinterval(1e-5)  # the simulator's threads meet at barriers: switch between them quickly

WTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K")


@pytest.fixture(scope="module")
def be():
    return get_backend("cuda")


def weight_rows(name, n_out, n_in, seed):
    """[n_out, row_bytes] uint8 rows of type name quantized from normal values (k-quants via tools/synthetic)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) * 0.5).astype(np.float32)
    if name in ("Q4_K", "Q5_K", "Q6_K"):
        import synthetic
        raw = getattr(synthetic, f"quantize_{name.lower()}")(w)
    else:
        raw = quantize(w, T[name])
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(n_out, -1)
    raw.flags.writeable = False
    return raw


def close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1e-30, float(np.abs(b).max()))
    err = float(np.abs(a - b).max()) / scale
    assert err <= rtol, f"max error {err:.3e} of max |ref| {scale:.3e} > {rtol:.1e}"


@pytest.mark.parametrize("name", WTYPES)
def test_matmul_vs_float64(be, name):
    n_out, n_in, n_tok = 12, 256, 5  # 5 tokens: two token tiles of the kernel, one partial
    raw = weight_rows(name, n_out, n_in, seed=1)
    x = np.random.default_rng(2).standard_normal((n_tok, n_in)).astype(np.float32)
    exact = x.astype(np.float64) @ dequantize(raw, T[name]).astype(np.float64).reshape(n_out, n_in).T
    y = mm.matmul(be.upload(x), raw, int(T[name]))
    close(to_host(y), exact, 1e-5)
    # and the CPU op agrees within its activation-quantization error
    close(to_host(y), mm.matmul(x, raw, int(T[name])), 5e-2)


@pytest.mark.parametrize("name", WTYPES)
def test_get_rows_vs_cpu(be, name):
    raw = weight_rows(name, 9, 256, seed=3)
    ids = np.array([8, 0, 3, 3], np.int32)
    got = to_host(mm.get_rows(raw, int(T[name]), be.upload(ids), 256))
    want = mm.get_rows(raw, int(T[name]), ids, 256)
    if SIM:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    else:
        close(got, want, 1e-6)


def test_rms_norm_and_heads(be):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    close(to_host(basic.rms_norm(be.upload(x), w, 1e-6)), basic.rms_norm(x, w, 1e-6), 1e-6)
    out = be.upload(x.copy())
    basic.rms_norm(out, w, 1e-6, out=out)  # in place, as the models call it
    close(to_host(out), basic.rms_norm(x, w, 1e-6), 1e-6)
    q = rng.standard_normal((2, 3, 16)).astype(np.float32)
    wh = rng.standard_normal(16).astype(np.float32)
    close(to_host(basic.rms_norm_heads(be.upload(q), wh, 1e-6)), basic.rms_norm_heads(q.copy(), wh, 1e-6), 1e-6)


@pytest.mark.parametrize("mode", [basic.ROPE_NORM, basic.ROPE_NEOX])
def test_rope(be, mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 16)).astype(np.float32)
    rc = basic.RopeCache(np.array([0, 7, 300], np.int32), 12, 10000.0, 1.0, None, mode)  # n_rot < head_dim
    close(to_host(rc.apply(be.upload(x))), rc.apply(x.copy()), 1e-6)


def test_swiglu_geglu_softcap(be):
    rng = np.random.default_rng(6)
    g = (rng.standard_normal((3, 50)) * 4).astype(np.float32)
    g[0, :4] = [-12.0, 12.0, -10.0, 9.99]
    u = rng.standard_normal((3, 50)).astype(np.float32)
    close(to_host(basic.swiglu(be.upload(g), be.upload(u))), basic.swiglu(g.copy(), u), 1e-6)
    got = to_host(basic.geglu_tanh(be.upload(g), be.upload(u)))
    want = basic.geglu_tanh(g.copy(), u)
    if SIM:  # the same f16 rounding and table entry
        assert np.array_equal(got, want)
    close(got, want, 1e-6)
    close(to_host(basic.softcap(be.upload(g), 30.0)), basic.softcap(g, 30.0), 1e-6)


def test_tensor_surface(be):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    y = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    d = be.upload(x)
    d += be.upload(y)
    d += b
    d *= np.float32(0.5)
    assert np.array_equal(to_host(d), ((x + y) + b) * np.float32(0.5))
    rows = np.array([3, 1], np.int32)
    assert np.array_equal(to_host(d[rows]), to_host(d)[rows])
    e = np.empty_like(d)
    assert e.shape == (4, 8) and type(e) is type(d)
    assert d.reshape(2, -1).shape == (2, 16)
    with pytest.raises(TypeError):
        np.asarray(d)  # never an implicit copy to the host


@pytest.mark.parametrize("type_kv", ["f32", "f16", "bf16", "q8_0"])
def test_kv_store_bytes_and_attention(be, type_kv):
    """Same rows stored into a host cache and a device cache: identical bytes; attention over them (two
    sequences, GQA, a window, a softcap) agrees with the CPU kernel."""
    rng = np.random.default_rng(8)
    n_head, n_head_kv, dk, size = 4, 2, 32, 16
    host = KVCache(1, size, [n_head_kv * dk], [n_head_kv * dk], type_kv, type_kv, n_seq_max=2)
    dev = KVCache(1, size, [n_head_kv * dk], [n_head_kv * dk], type_kv, type_kv, n_seq_max=2, backend=be)
    pos = np.array([0, 1, 2, 3, 4, 0, 1, 2, 5, 6], np.int32)
    seq = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0], np.int32)
    for c in (host.cells, dev.cells):
        cells = c.find_slot(pos, seq)
    k = (rng.standard_normal((10, n_head_kv * dk)) * 2).astype(np.float32)
    v = rng.standard_normal((10, n_head_kv * dk)).astype(np.float32)
    host.store(0, cells, k, v)
    dev.store(0, cells, be.upload(k), be.upload(v))
    for hb, db in ((host.k[0], dev.k[0]), (host.v[0], dev.v[0])):
        assert np.array_equal(to_host(db), np.ascontiguousarray(hb).view(np.uint8).reshape(size, -1))
    q = rng.standard_normal((3, n_head, dk)).astype(np.float32)
    q_pos, q_seq = np.array([4, 2, 6], np.int32), np.array([0, 1, 0], np.int32)
    for n_swa, softcap in ((0, 0.0), (3, 0.0), (0, 20.0)):
        want = att.attention(q, host, 0, q_pos, q_seq, 0.2, n_swa=n_swa, softcap=softcap)
        got = to_host(att.attention(be.upload(q), dev, 0, q_pos, q_seq, 0.2, n_swa=n_swa, softcap=softcap))
        close(got, want, 2e-5)


def test_kv_move_rows(be):
    rng = np.random.default_rng(9)
    dev = KVCache(1, 8, [64], [64], "q8_0", "f16", backend=be)
    host = KVCache(1, 8, [64], [64], "q8_0", "f16")
    cells = np.arange(4, dtype=np.int32)
    k, v = rng.standard_normal((2, 4, 64)).astype(np.float32)
    host.store(0, cells, k, v)
    dev.store(0, cells, be.upload(k), be.upload(v))
    src, dst = np.array([1, 3], np.int32), np.array([6, 5], np.int32)
    host.move_rows(src, dst)
    dev.move_rows(src, dst)
    assert np.array_equal(to_host(dev.k[0]), host.k[0])
    assert np.array_equal(to_host(dev.v[0]), host.v[0].view(np.uint8).reshape(8, -1))


def test_device_cache_refuses_host_only_operations(be):
    from pyrt.errors import DeviceError
    dev = KVCache(1, 8, [64], [64], "f16", "f16", backend=be)
    with pytest.raises(DeviceError):
        dev.k_values(0, np.arange(2, dtype=np.int32))
    with pytest.raises(DeviceError):
        KVCache(1, 8, [64], [64], "q8_KV", "f16", backend=be)


@pytest.mark.parametrize("arch,wtype", [("llama", "Q8_0"), ("qwen2", "Q4_0")])
def test_tiny_model_logits_match_cpu(tmp_path, arch, wtype):
    """Prefill of 4 tokens then 2 decodes, the same on CPU and device: logits within the parity rules
    (NMSE <= 2e-3 against the CPU, the same argmax wherever the CPU's top-2 margin is not a near-tie)."""
    import synthetic

    import pyrt
    from pyrt.runtime.context import Batch
    path = str(tmp_path / f"{arch}.gguf")
    synthetic.write_model(path, arch, wtype, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, n_layer=1,
                          n_vocab=330, n_ctx=64)
    outs = []
    for device in ("cpu", "cuda"):
        llm = pyrt.load(path, n_ctx=32, n_ubatch=8, warmup=False, progress=False, device=device)
        rows = [llm.ctx.decode(Batch.from_tokens([1, 17, 42, 99], logits="all"))]
        for p, t in ((4, 7), (5, 123)):
            rows.append(llm.ctx.decode(Batch.from_tokens([t], pos0=p)))
        outs.append(np.concatenate(rows).astype(np.float64))
    cpu, gpu = outs
    assert np.isfinite(gpu).all()
    nmse = float(((gpu - cpu) ** 2).sum() / (cpu ** 2).sum())
    assert nmse <= 2e-3, nmse
    row_rms = np.sqrt(((gpu - cpu) ** 2).mean(axis=1))
    top2 = np.sort(cpu, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 4.0 * row_rms
    assert np.array_equal(gpu.argmax(1)[decided], cpu.argmax(1)[decided])
