// Fused look-back projection: per segment, <g, b> and ||g||^2 of two float32 vectors, in float64.
//
// The host splits [0, d) into chunks that never cross a segment boundary (see cupy_ops.Plan).
// project_chunks reduces each chunk with one block into partial[2c], partial[2c + 1];
// combine_segments then adds each segment's chunk partials in a fixed order. Two passes instead
// of atomics keep the result bit-for-bit reproducible from run to run, which the replicated
// LBGM decision relies on. Every output element is written, also for empty segments.
//
// No headers: NVRTC compiles this file as it is, and nvcc compiles it for the build check.

typedef long long i64;

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Sums a and b over the block; thread 0 holds the totals. Every thread of the block must call it.
__device__ void block_sum2(double &a, double &b) {
    __shared__ double sa[32], sb[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
        sa[warp] = a;
        sb[warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warps = (blockDim.x + 31) >> 5;
        a = warp_sum(lane < n_warps ? sa[lane] : 0.0);
        b = warp_sum(lane < n_warps ? sb[lane] : 0.0);
    }
    __syncthreads();  // sa and sb are reused by the block's next call
}

// float32 * float32 is exact in float64, so only the additions round.
__device__ __forceinline__ void add_pair(float g, float b, double &dot, double &gg) {
    const double gd = (double)g;
    dot = fma(gd, (double)b, dot);
    gg = fma(gd, gd, gg);
}

__device__ __forceinline__ void add_quad(float4 g, float4 b, double &dot, double &gg) {
    add_pair(g.x, b.x, dot, gg);
    add_pair(g.y, b.y, dot, gg);
    add_pair(g.z, b.z, dot, gg);
    add_pair(g.w, b.w, dot, gg);
}

#define UNROLL 4  // float4 loads of g and b in flight per thread before their first use

// Sums over [begin, end) with 16-byte loads in the aligned middle and scalar loads at the ragged
// ends. vectorised = 0 (a base pointer not 16-byte aligned) reads everything with scalar loads.
__device__ void chunk_sums(const float *__restrict__ g, const float *__restrict__ b, i64 begin,
                           i64 end, int vectorised, double &dot, double &gg) {
    i64 mid_begin = end, mid_end = end;
    if (vectorised) {
        mid_begin = min((begin + 3) & ~3LL, end);
        mid_end = max(mid_begin, end & ~3LL);
    }
    for (i64 i = begin + threadIdx.x; i < mid_begin; i += blockDim.x) add_pair(g[i], b[i], dot, gg);
    for (i64 i = mid_end + threadIdx.x; i < end; i += blockDim.x) add_pair(g[i], b[i], dot, gg);

    const float4 *__restrict__ g4 = reinterpret_cast<const float4 *>(g);
    const float4 *__restrict__ b4 = reinterpret_cast<const float4 *>(b);
    const i64 step = blockDim.x, q_end = mid_end >> 2;
    i64 q = (mid_begin >> 2) + threadIdx.x;
    for (; q + (UNROLL - 1) * step < q_end; q += UNROLL * step) {
        float4 gv[UNROLL], bv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            gv[u] = g4[q + u * step];
            bv[u] = b4[q + u * step];
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) add_quad(gv[u], bv[u], dot, gg);
    }
    for (; q < q_end; q += step) add_quad(g4[q], b4[q], dot, gg);
}

// Pass 1: block-stride loop over chunks; on chunk c, partial[2c] = <g, b> and
// partial[2c + 1] = ||g||^2.
extern "C" __global__ void project_chunks(const float *__restrict__ g, const float *__restrict__ b,
                                          const i64 *__restrict__ chunk_begin,
                                          const i64 *__restrict__ chunk_end, i64 n_chunks,
                                          int vectorised, double *__restrict__ partial) {
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        double dot = 0.0, gg = 0.0;
        chunk_sums(g, b, chunk_begin[c], chunk_end[c], vectorised, dot, gg);
        block_sum2(dot, gg);
        if (threadIdx.x == 0) {
            partial[2 * c] = dot;
            partial[2 * c + 1] = gg;
        }
    }
}

// Pass 2: segment s owns chunks [seg_first[s], seg_first[s + 1]); out[s] = <g, b>,
// out[n_segments + s] = ||g||^2.
extern "C" __global__ void combine_segments(const double *__restrict__ partial,
                                            const i64 *__restrict__ seg_first, i64 n_segments,
                                            double *__restrict__ out) {
    for (i64 s = blockIdx.x; s < n_segments; s += gridDim.x) {
        double dot = 0.0, gg = 0.0;
        for (i64 c = seg_first[s] + threadIdx.x; c < seg_first[s + 1]; c += blockDim.x) {
            dot += partial[2 * c];
            gg += partial[2 * c + 1];
        }
        block_sum2(dot, gg);
        if (threadIdx.x == 0) {
            out[s] = dot;
            out[n_segments + s] = gg;
        }
    }
}
