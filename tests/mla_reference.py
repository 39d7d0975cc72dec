"""The float64 oracle of MLA attention over a latent cache, shared by the CPU and CUDA FlashMLA tests."""

import numpy as np


def naive_latent(q, rows, n_rope, cell_pos, cell_seq, q_pos, q_seq, scale):
    """softmax(scale * q . row) . c_kv over the visible cells -> [n_tok, H, C] float64.

    q [n_tok, H, n_rope + C]; rows [n_cells, n_rope + C] as the cache holds them ([k_pe | c_kv]); a cell is
    visible when it holds the query's sequence (bit q_seq of cell_seq) at a position <= q_pos.
    A query that sees no cell gets zeros."""
    q = q.astype(np.float64)
    rows = rows.astype(np.float64)
    s = np.einsum("thd,cd->thc", q, rows) * scale
    vis = (((cell_seq[None, :] >> q_seq[:, None].astype(np.uint64)) & np.uint64(1)) == 1) & \
        (cell_pos[None, :] <= q_pos[:, None])
    s = np.where(vis[:, None, :], s, -np.inf)
    m = s.max(axis=2, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    den = p.sum(axis=2, keepdims=True)
    p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
    return np.einsum("thc,cd->thd", p, rows[:, n_rope:])
