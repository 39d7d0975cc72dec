from libc.stdint cimport int32_t, uint64_t


cdef class Cells:
    cdef readonly int size
    cdef readonly int n_seq_max
    cdef readonly int used
    cdef readonly int head
    cdef readonly bint has_shift
    cdef object _pos_np
    cdef object _seq_np
    cdef object _delta_np
    cdef int32_t[::1] _pos
    cdef uint64_t[::1] _seq
    cdef int32_t[::1] _delta

    cdef int _check_seq(self, long seq_id, bint allow_all) except -1
    cdef int _free_cell(self, int c) noexcept
    cdef int _find(self, int32_t[::1] out, int n) noexcept
    cdef int _move(self, int src, int dst) noexcept
