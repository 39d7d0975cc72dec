"""FlashMLA and YaRN RoPE on the device: the CUDA simulator against the CPU kernels and float64, and every
kernel compiled to PTX for cc 8.0 and 9.0 (no GPU needed for either).

The simulator tests need NUMBA_ENABLE_CUDASIM=1 before numba-cuda is imported: tests/test_cuda.py runs this
file in a child pytest with it set (tests/simulator.py); in the child they run, here they are skipped.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pytest
from mla_reference import naive_latent
from simulator import ROOT, SIM

pytest.importorskip("numba_cuda")

sim_only = pytest.mark.skipif(not SIM, reason="runs in tests/test_cuda.py's simulator children")

H, C, R = 4, 64, 32


@pytest.mark.skipif(SIM, reason="the simulator has no compile_ptx")
@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_kernels_compile_to_ptx(cc):
    from pyrt._kernels.cuda import mla, ptx, yarn  # noqa: F401  (registers the kernels)
    names = [n for n in ptx.REGISTRY if n.startswith(("mla.", "yarn."))]
    assert len(names) == 9, names
    for name in names:
        fn, sigs = ptx.REGISTRY[name]
        for sig in sigs:
            text = ptx.compile_for(fn, sig, cc)
            assert f".target sm_{cc[0]}{cc[1]}" in text, name
            assert ".entry" in text, name


# ---------------------------------------------------------------------------------------- simulator tests
def _device_flash(q, k, type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, scale):
    from numba import cuda

    from pyrt.ops import mla
    d = cuda.to_device
    out = mla.flash_mla(d(q), d(k), type_k, d(cell_pos), d(cell_seq), d(kv_idx), d(q_pos), d(q_seq), scale, R)
    return out.copy_to_host()


@sim_only
@pytest.mark.parametrize("type_k", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("n_head,n_tok,n_cells,split", [(4, 2, 37, False), (10, 1, 64, True)])
def test_flash_mla_matches_cpu_and_float64(type_k, n_head, n_tok, n_cells, split):
    """Two interleaved sequences, causal by position; a partial head group; KV splits merged for decode."""
    from pyrt.ops import paths
    with paths.using(device_min_split_cells=16) if split else contextlib.nullcontext():  # several KV splits
        _check_flash_mla(type_k, n_head, n_tok, n_cells, split)


def _check_flash_mla(type_k, n_head, n_tok, n_cells, split):
    from pyrt.kv.cache import KVCache
    from pyrt.ops import mla, paths
    rng = np.random.default_rng(n_cells + len(type_k))
    rows = rng.standard_normal((n_cells, R + C)).astype(np.float32)
    cache = KVCache(1, n_cells, [R + C], [0], type_k, type_k, n_seq_max=2, head_dim_k=R + C, head_dim_v=0)
    cache.store(0, np.arange(n_cells, dtype=np.int32), rows, None)
    held = cache.k_values(0, np.arange(n_cells))
    cell_pos = (np.arange(n_cells, dtype=np.int32) // 2).astype(np.int32)
    cell_seq = np.where(np.arange(n_cells) % 2 == 0, 1, 2).astype(np.uint64)
    q_pos = np.sort(rng.integers(0, n_cells // 2, n_tok)).astype(np.int32)
    q_pos[0] = -1 if n_tok > 1 else q_pos[0]  # a query that sees no cell: zeros
    q_seq = rng.integers(0, 2, n_tok).astype(np.int32)
    q = (0.3 * rng.standard_normal((n_tok, n_head, R + C))).astype(np.float32)
    kv_idx = rng.permutation(n_cells).astype(np.int32)  # scan order is not cell order
    from pyrt._kernels.cuda import mla as cmla
    n_split, _ = cmla.choose_split(n_tok, n_head, n_cells, mla.DEVICE_TARGET_BLOCKS,
                                  paths.current().device_min_split_cells)
    assert (n_split > 1) == split
    got = _device_flash(q, cache.k[0], type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, 0.125)
    cpu = mla.flash_mla(q, cache.k[0], type_k, cell_pos, cell_seq, kv_idx, q_pos, q_seq, 0.125, R)
    ref = naive_latent(q, held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    # the CPU scores a q8_0 cache against the queries quantized to Q8_0 (as llama.cpp's CPU backend does); the
    # device takes the f32 queries
    q_cpu = q
    if type_k == "q8_0":
        import gguf
        T = gguf.GGMLQuantizationType.Q8_0
        q_cpu = gguf.quants.dequantize(gguf.quants.quantize(q.reshape(-1, R + C), T), T).reshape(q.shape)
    ref_cpu = naive_latent(q_cpu.astype(np.float32), held, R, cell_pos, cell_seq, q_pos, q_seq, 0.125)
    assert got.shape == (n_tok, n_head, C)
    if n_tok > 1:
        assert not got[0].any() and not cpu[0].any()
    for out, want in ((got, ref), (cpu, ref_cpu)):
        nmse = ((out - want) ** 2).sum() / (want ** 2).sum()
        assert nmse < (1e-10 if type_k == "f32" else 1e-9), nmse
    if type_k != "q8_0":
        np.testing.assert_allclose(got, cpu, rtol=1e-4, atol=1e-5)


@sim_only
def test_yarn_rope_matches_cpu():
    """YaRN angles (ramp between the corr dims, interpolation, mscale) and the NORM rotation of a column
    range inside each head, as the CPU rope cache and rope kernel apply them."""
    from numba import cuda

    from pyrt._kernels.cuda import yarn as cyarn
    from pyrt.ops import mla
    rng = np.random.default_rng(5)
    n_tok, n_head, dn, n_rot = 3, 2, 8, 16
    pos = np.array([0, 7, 4093], np.int32)
    args = (10000.0, 0.025, 1.0, 3.0, 9.0, 1.0)  # freq_base, freq_scale, ext_factor, corr low/high, mscale
    rc = mla.yarn_rope_cache(pos, n_rot, args[0], args[1], args[2], (args[3], args[4]), args[5])
    cos = cuda.device_array((n_tok, n_rot // 2), np.float32)
    sin = cuda.device_array((n_tok, n_rot // 2), np.float32)
    cyarn.rope_cache_yarn[cyarn.blocks(cos.size), cyarn.THREADS](cos, sin, cuda.to_device(pos), *args)
    np.testing.assert_allclose(cos.copy_to_host(), rc.cos, rtol=0, atol=2e-7)
    np.testing.assert_allclose(sin.copy_to_host(), rc.sin, rtol=0, atol=2e-7)
    q = rng.standard_normal((n_tok, n_head, dn + n_rot)).astype(np.float32)
    want = q.copy()
    pe = np.ascontiguousarray(want[:, :, dn:])
    rc.apply(pe)
    want[:, :, dn:] = pe
    dq = cuda.to_device(q)
    cyarn.rope_yarn_norm[cyarn.blocks(n_tok * n_rot // 2), cyarn.THREADS](dq, dn, n_rot, cuda.to_device(pos), *args)
    np.testing.assert_allclose(dq.copy_to_host(), want, rtol=1e-6, atol=1e-6)


class _HostKV:
    """The KV side of ForwardInputs for one deepseek2 layer's CPU attention: a host latent cache."""

    mla = 3

    def __init__(self, cache, cells, cell_pos, cell_seq, kv_idx):
        self.cache, self.cells, self.cell_pos, self.cell_seq, self.kv_idx = cache, cells, cell_pos, cell_seq, kv_idx

    def store(self, il, k, v):
        self.cache.store(0, self.cells, k, v)

    def mla_view(self, il):
        return self.cache.k[0], self.cache.type_k, self.cell_pos, self.cell_seq, self.kv_idx

    def seq_scans(self, il, n_swa=0):
        return []  # one sequence


@sim_only
@pytest.mark.parametrize("name,type_k", [("ds2-qlora-kb-q8_0", "q8_0")])
def test_deepseek2_attention_on_device_matches_cpu(name, type_k, tmp_path, monkeypatch):
    """One deepseek2 layer's absorbed attention (YaRN rows, the K-only cache store, W_UK by head, FlashMLA,
    W_UV by head) on the device against the model's CPU path, over a cache that already holds other cells."""
    import sys
    from types import SimpleNamespace

    from numba import cuda

    from pyrt._kernels.cuda import attention as ka
    from pyrt.io.gguf_file import GGUFFile
    from pyrt.kv.cache import KVCache
    from pyrt.models import deepseek2
    from pyrt.ops import basic, mla, paths
    from pyrt.ops import matmul as mm
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import synthetic_deepseek2 as sd
    spec = {n: (w, c, d) for n, w, c, d in sd.VARIANTS}[name]
    path = str(tmp_path / (name + ".gguf"))
    small = dict(n_embd=64, n_head=2, q_lora_rank=32, kv_lora_rank=32, n_ff=64, n_ff_exp=32)  # simulator time
    sd.write_model(path, spec[0], spec[1], **{**small, **spec[2]})
    model = deepseek2.DeepSeek2Model(GGUFFile(path))
    hp, x_ = model.hp, model.hp.extra
    A = model.layers[1].attn
    H, C, R, Dn, Dv = hp.n_head, x_["kv_lora_rank"], hp.n_rot, x_["n_embd_head_qk_nope"], hp.n_embd_head_v
    rng = np.random.default_rng(3)
    n_cells, n_old, n_tok = 24, 13, 2
    cache = KVCache(1, n_cells, [R + C], [0], type_k, type_k, n_seq_max=2, head_dim_k=R + C, head_dim_v=0)
    old = np.arange(n_old, dtype=np.int32)
    cache.store(0, old, (0.5 * rng.standard_normal((n_old, R + C))).astype(np.float32), None)
    cells = np.array([n_old, n_old + 3], np.int32)
    cell_pos = np.full(n_cells, -1, np.int32)
    cell_pos[old] = np.arange(n_old) // 2 + 1
    cell_seq = np.zeros(n_cells, np.uint64)
    cell_seq[old] = np.where(old % 2 == 0, 1, 2).astype(np.uint64)
    pos = np.array([8, 9], np.int32)
    seq = np.array([0, 0], np.int32)
    cell_pos[cells] = pos
    cell_seq[cells] = 1
    kv_idx = np.nonzero(cell_seq)[0].astype(np.int32)
    dev_k = cuda.to_device(cache.k[0].view(np.uint8).reshape(n_cells, -1))  # the cache before the ubatch
    h = (rng.standard_normal((n_tok, hp.n_embd))).astype(np.float32)
    # the projections (dense matmuls of the cuda backend) on the host; their outputs go to the device
    if A.q is None:
        qa_, kva = mm.matmul_multi(h, [(A.q_a.w.raw, A.q_a.w.ggml_type), (A.kv_a_mqa.w.raw, A.kv_a_mqa.w.ggml_type)])
        q = A.q_b(basic.rms_norm(qa_, A.q_a_norm, hp.f_norm_rms_eps))
    else:
        q, kva = mm.matmul_multi(h, [(A.q.w.raw, A.q.w.ggml_type), (A.kv_a_mqa.w.raw, A.kv_a_mqa.w.ggml_type)])
    inp = SimpleNamespace(kv=_HostKV(cache, cells, cell_pos, cell_seq, kv_idx), pos=pos, seq=seq)
    assert n_tok < paths.current().mla_decompress_min_tokens  # the absorbed path
    # CPU: the model's own path, fed the same projections (its one linear_multi call)
    monkeypatch.setattr(deepseek2, "linear_multi", lambda hh, *lins: [q if A.q is not None else qa_, kva])
    want = model._attention(1, A, h, model.rope_cache(pos), inp, 3)
    # device
    yarn = (hp.rope_freq_base, hp.rope_freq_scale, x_["ext_factor"], *x_["corr_dims"], x_["rope_mscale"])
    d = cuda.to_device
    row = mla.mla_kv_rows_device(d(np.ascontiguousarray(kva)), d(A.kv_a_norm), hp.f_norm_rms_eps, d(pos), yarn)
    ka.store_rows[n_tok, ka.NT](dev_k.reshape(dev_k.size), dev_k.shape[1], 0, d(cells), row,
                                ka.CACHE_KINDS.index(type_k))
    # the stored latent rows are the CPU's, byte for byte (f32 rows within rounding, then the same conversion)
    held = dev_k.copy_to_host()
    np.testing.assert_array_equal(held[cells], cache.k[0].view(np.uint8).reshape(n_cells, -1)[cells])
    kb = SimpleNamespace(raw=d(A.k_b.raw), ggml_type=A.k_b.ggml_type)
    vb = SimpleNamespace(raw=d(A.v_b.raw), ggml_type=A.v_b.ggml_type)
    got = mla.mla_attention_device(d(np.ascontiguousarray(q.reshape(n_tok, H, Dn + R))), kb, A.k_b.row0, vb,
                                   A.v_b.row0, Dv, dev_k, type_k, d(cell_pos), d(cell_seq), d(kv_idx), d(pos),
                                   d(seq), model.kq_scale, yarn, R).copy_to_host()
    nmse = ((got - want) ** 2).sum() / (want ** 2).sum()
    # the CPU quantizes the activations of both the W_UK and the W_UV product to Q8_0 (2x its matmul NMSE)
    assert nmse < 3e-4, nmse


@pytest.mark.slow
@sim_only
def test_deepseek2_decodes_on_device_like_cpu(tmp_path):
    """The synthetic deepseek2 model (q_lora, YaRN, Q8_0 weights, a dense layer then MoE layers with a shared
    expert) on device="cuda": token by token through the latent cache, logits as on the CPU."""
    import pyrt
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import synthetic_deepseek2 as sd
    name = "ds2-qlora-kb-q8_0"
    spec = {n: (w, c, d) for n, w, c, d in sd.VARIANTS}[name]
    path = str(tmp_path / (name + ".gguf"))
    small = dict(n_embd=64, n_head=2, q_lora_rank=32, kv_lora_rank=32, n_ff=64, n_ff_exp=32, n_layer=2)
    sd.write_model(path, spec[0], spec[1], **{**small, **spec[2]})  # small: simulator time
    ids = [5, 300]
    kw = dict(n_ctx=32, n_ubatch=1, warmup=False, progress=False, type_k="q8_0")
    cpu = np.asarray(pyrt.load(path, **kw).eval_logits(ids), np.float64)
    dev = np.asarray(pyrt.load(path, device="cuda", **kw).eval_logits(ids), np.float64)
    assert dev.shape == cpu.shape == (len(ids), 512) and np.isfinite(dev).all()
    nmse = float(((dev - cpu) ** 2).sum() / (cpu ** 2).sum())
    # the CPU quantizes activations to Q8_0 for every product; the device does not
    assert nmse < 1e-3, nmse
    assert (dev.argmax(1) == cpu.argmax(1)).all()
