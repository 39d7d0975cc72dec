"""The integer codes kernels take for a storage format (their `kind` arguments): one number per format, for
weight, activation and cache formats alike, written only here. pyrt.formats.qtypes and
pyrt.formats.cache_types map format names to them. Leaf: imports nothing.
"""

F32 = 0    # f32 values (cache rows as uint32 bits)
F16 = 1    # IEEE half bits
BF16 = 2   # bfloat16 bits
Q8_0 = 3   # per 32 values: f16 d, 32 int8
Q8_KV = 4  # per segment of seg values: f32 d, int32 sum, seg int8 (ik_llama.cpp)
Q4_0 = 5   # per 32 values: f16 d, 16 bytes of nibbles
Q5_0 = 6   # per 32 values: f16 d, u32 high bits, 16 bytes of nibbles
Q4_K = 7   # per 256 values: 144 bytes (ggml block_q4_K)
Q5_K = 8   # per 256 values: 176 bytes
Q6_K = 9   # per 256 values: 210 bytes
Q8_K = 10  # per 256 values: f32 d, 256 int8, 16 int16 block sums (activations of the k-quants)
