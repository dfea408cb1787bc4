// Bank aggregation: out[j] = sum_i coefs[i, seg(j)] * bank[rows[i], j], float32 accumulation.
//
// The bank is float32 or bfloat16 (read as raw 16-bit patterns and widened on load); out is
// float32. Work comes as the same segment-respecting chunks as the projection (cupy_ops.Plan):
// a chunk lies in one segment, so one coefficient per row serves the whole chunk. Each block
// stages up to ROW_TILE (row offset, weight) pairs in shared memory and every thread reads each
// selected row once over its columns, through the read-only path (__ldg); more rows than
// ROW_TILE are taken tile by tile, adding to out. Every out element in [0, d) is written (the
// caller handles zero selected rows).
//
// No headers: NVRTC compiles this file as it is, and nvcc compiles it for the build check.

typedef long long i64;

#define ROW_TILE 512

struct F32 {
    typedef float elem;
    static const int N = 4;  // elements per 16-byte load
    static __device__ __forceinline__ float load(const float *p) { return __ldg(p); }
    static __device__ __forceinline__ void fma_vec(const float *p, float w, float *acc) {
        const float4 v = __ldg(reinterpret_cast<const float4 *>(p));
        acc[0] = fmaf(w, v.x, acc[0]);
        acc[1] = fmaf(w, v.y, acc[1]);
        acc[2] = fmaf(w, v.z, acc[2]);
        acc[3] = fmaf(w, v.w, acc[3]);
    }
};

struct BF16 {
    typedef unsigned short elem;
    static const int N = 8;
    static __device__ __forceinline__ float load(const unsigned short *p) {
        return __uint_as_float(((unsigned int)__ldg(p)) << 16);
    }
    // Each 32-bit word holds two bfloat16 values, the lower address in the low half.
    static __device__ __forceinline__ void fma_pair(unsigned int word, float w, float *acc) {
        acc[0] = fmaf(w, __uint_as_float(word << 16), acc[0]);
        acc[1] = fmaf(w, __uint_as_float(word & 0xffff0000u), acc[1]);
    }
    static __device__ __forceinline__ void fma_vec(const unsigned short *p, float w, float *acc) {
        const uint4 v = __ldg(reinterpret_cast<const uint4 *>(p));
        fma_pair(v.x, w, acc);
        fma_pair(v.y, w, acc + 2);
        fma_pair(v.z, w, acc + 4);
        fma_pair(v.w, w, acc + 6);
    }
};

// Adds or stores n consecutive sums at out + j (n a multiple of 4, out + j 16-byte aligned).
template <int n>
__device__ __forceinline__ void write_vec(float *out, i64 j, const float *acc, bool add) {
#pragma unroll
    for (int k = 0; k < n; k += 4) {
        float4 *dst = reinterpret_cast<float4 *>(out + j + k);
        float4 v = make_float4(acc[k], acc[k + 1], acc[k + 2], acc[k + 3]);
        if (add) {
            const float4 old = *dst;
            v.x += old.x;
            v.y += old.y;
            v.z += old.z;
            v.w += old.w;
        }
        *dst = v;
    }
}

// Columns [begin, end) with one scalar load per row and column: the ragged ends of a chunk.
template <class T>
__device__ void scalar_columns(const typename T::elem *__restrict__ bank, const i64 *s_off,
                               const float *s_w, int n, i64 begin, i64 end, bool add,
                               float *__restrict__ out) {
    for (i64 j = begin + threadIdx.x; j < end; j += blockDim.x) {
        float acc = 0.0f;
        for (int r = 0; r < n; ++r) acc = fmaf(s_w[r], T::load(bank + s_off[r] + j), acc);
        out[j] = add ? out[j] + acc : acc;
    }
}

// Columns [begin, end) of one chunk over the n staged rows: 16-byte loads in the aligned middle,
// scalar loads at the ragged ends (everywhere when vectorised = 0).
template <class T>
__device__ void chunk_columns(const typename T::elem *__restrict__ bank, const i64 *s_off,
                              const float *s_w, int n, i64 begin, i64 end, int vectorised,
                              bool add, float *__restrict__ out) {
    const int N = T::N;
    i64 mid_begin = end, mid_end = end;
    if (vectorised) {
        mid_begin = min((begin + N - 1) / N * N, end);
        mid_end = max(mid_begin, end / N * N);
    }
    scalar_columns<T>(bank, s_off, s_w, n, begin, mid_begin, add, out);
    scalar_columns<T>(bank, s_off, s_w, n, mid_end, end, add, out);
    // Two column groups per thread and iteration keep at least two loads in flight per row.
    const i64 step = (i64)blockDim.x * N;
    i64 j = mid_begin + (i64)threadIdx.x * N;
    for (; j + step < mid_end; j += 2 * step) {
        float acc0[N] = {}, acc1[N] = {};
#pragma unroll 4
        for (int r = 0; r < n; ++r) {
            const typename T::elem *p = bank + s_off[r] + j;
            T::fma_vec(p, s_w[r], acc0);
            T::fma_vec(p + step, s_w[r], acc1);
        }
        write_vec<N>(out, j, acc0, add);
        write_vec<N>(out, j + step, acc1, add);
    }
    if (j < mid_end) {
        float acc[N] = {};
#pragma unroll 4
        for (int r = 0; r < n; ++r) T::fma_vec(bank + s_off[r] + j, s_w[r], acc);
        write_vec<N>(out, j, acc, add);
    }
}

template <class T>
__device__ void aggregate_chunks(const typename T::elem *__restrict__ bank, i64 row_stride,
                                 const i64 *__restrict__ rows, int n_rows,
                                 const float *__restrict__ coefs, int n_segments,
                                 const i64 *__restrict__ chunk_begin,
                                 const i64 *__restrict__ chunk_end,
                                 const int *__restrict__ chunk_seg, i64 n_chunks, int vectorised,
                                 float *__restrict__ out) {
    __shared__ i64 s_off[ROW_TILE];
    __shared__ float s_w[ROW_TILE];
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int seg = chunk_seg[c];
        for (int r0 = 0; r0 < n_rows; r0 += ROW_TILE) {
            const int n = min(ROW_TILE, n_rows - r0);
            __syncthreads();  // the previous tile's readers are done with s_off and s_w
            for (int r = threadIdx.x; r < n; r += blockDim.x) {
                s_off[r] = rows[r0 + r] * row_stride;
                s_w[r] = coefs[(i64)(r0 + r) * n_segments + seg];
            }
            __syncthreads();
            chunk_columns<T>(bank, s_off, s_w, n, chunk_begin[c], chunk_end[c], vectorised, r0 > 0,
                             out);
        }
    }
}

extern "C" __global__ void aggregate_f32(const float *bank, i64 row_stride, const i64 *rows,
                                         int n_rows, const float *coefs, int n_segments,
                                         const i64 *chunk_begin, const i64 *chunk_end,
                                         const int *chunk_seg, i64 n_chunks, int vectorised,
                                         float *out) {
    aggregate_chunks<F32>(bank, row_stride, rows, n_rows, coefs, n_segments, chunk_begin,
                          chunk_end, chunk_seg, n_chunks, vectorised, out);
}

extern "C" __global__ void aggregate_bf16(const unsigned short *bank, i64 row_stride,
                                          const i64 *rows, int n_rows, const float *coefs,
                                          int n_segments, const i64 *chunk_begin,
                                          const i64 *chunk_end, const int *chunk_seg,
                                          i64 n_chunks, int vectorised, float *out) {
    aggregate_chunks<BF16>(bank, row_stride, rows, n_rows, coefs, n_segments, chunk_begin,
                           chunk_end, chunk_seg, n_chunks, vectorised, out);
}
