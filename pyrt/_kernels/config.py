"""Compile-time constants shared by every kernel module (leaf; numpy/numba only)."""

# No nnan/ninf: attention masks use -inf.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
