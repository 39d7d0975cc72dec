import numpy as np
def aligned(a, al=64):
    buf = np.empty(a.nbytes + al, np.uint8)
    off = (-buf.ctypes.data) % al
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
