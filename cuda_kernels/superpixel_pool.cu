// Superpixel pooling: per-superpixel sums, pixel counts and means of per-pixel maps.
//
// Contract: wsvs.runtime.pooling.superpixel_pool. labels (B, H, W) int32 ids in [0, S) per image;
// values either planar (B, C, H, W) float32 (attention maps, any per-pixel maps) or interleaved
// (B, H, W, C) uint8 (RGB frames, for per-superpixel mean colours). Outputs: sums (B, S, C) float64,
// counts (B, S) uint64, means (B, S, C) float32 = float32(sums / counts), 0 where counts == 0.
// sums and counts must be zeroed before pool_accumulate_*; ids out of range are skipped and set *bad_label.
//
// Precision. Every float32 or uint8 value is exact in double, so only the additions round. The reference
// adds a superpixel's values in pixel order; here each thread adds a short run of pixels, then blocks and
// the global bins add those partial sums in an unspecified order. Any summation order of n terms is within
// (n - 1) * 2^-53 / (1 - (n - 1) * 2^-53) * sum|v| of the exact sum, so a sum differs from the reference by
// at most twice that: relative 2^-32 for n <= 2^20 values of one sign, so float32 means differ by at most
// one unit in the last place. No addition rounds at all, and the sum equals the reference bit for bit, when
// sum|v| <= 2^29 * (smallest non-zero |v|): with 2^e <= that smallest |v|, every value and every partial
// sum is a multiple of 2^(e-23) below 2^(e+30), which double holds exactly. That covers colours and maps
// whose values span less than about 2^29 / n; counts are always exact. Means use the same IEEE double
// division and round-to-nearest conversion as numpy: equal sums give equal means.
//
// Work split: grid (tiles of pixels, B images, channel chunks). A block either privatises the bins of its
// chunk in shared memory (S * chunk doubles for sums, then S uint32 counts) and adds the non-empty ones to
// the global bins at the end, or, when even one channel's bins do not fit, adds straight to global memory.
// Superpixels are compact, so a thread walking a run of RUN_PIXELS neighbours in a row meets few ids: it
// adds values while the id stays the same and issues one atomic per id change, not one per pixel.
//
// Coalescing. A block walks its tile in stages of blockDim.x * RUN_PIXELS pixels. Each stage is first copied
// into a shared staging buffer with thread t reading pixels t, t + blockDim.x, ...: consecutive threads read
// consecutive pixels, so a warp's loads fill whole memory transactions. Then each thread walks its run of
// consecutive pixels in the buffer. The buffer holds the stage's labels (each thread copies its run's ids into
// registers), then one channel's values at a time (as float: float32 and uint8 values are exact in it). One
// padding word per 32 (STAGE_INDEX) puts the 32 runs of a warp, RUN_PIXELS words apart, in distinct banks.

#define RUN_PIXELS 8
#define STAGE_INDEX(i) ((i) + ((i) >> 5))

// Planar float32 maps: values[b][c][p].
struct PlanarF32 {
    typedef float Value;
    static __device__ __forceinline__ float load(const float* values, long long image, int channel, long long pixel,
                                                 int channels, long long pixels) {
        return values[(image * channels + channel) * pixels + pixel];
    }
};

// Interleaved uint8 frames: values[b][p][c] (RGB channels last).
struct InterleavedU8 {
    typedef unsigned char Value;
    static __device__ __forceinline__ float load(const unsigned char* values, long long image, int channel,
                                                 long long pixel, int channels, long long pixels) {
        return (float)values[(image * pixels + pixel) * channels + channel];
    }
};

// Bins of one image: sums[s * sum_stride + c - first_channel], counts[s].
template <typename Count>
struct Bins {
    double* sums;
    Count* counts;  // null when this block does not count
    int sum_stride;
    int first_channel;
};

template <typename Count>
__device__ __forceinline__ void add_count(const Bins<Count>& bins, int id, unsigned int n) {
    if (id >= 0 && bins.counts) atomicAdd(&bins.counts[id], (Count)n);
}

__device__ __forceinline__ void add_sum_to(double* sums, int stride, int first_channel, int id, int channel,
                                           double sum) {
    if (id >= 0) atomicAdd(&sums[(long long)id * stride + channel - first_channel], sum);
}

// Accumulates pixels [begin, end) of image `image` into `bins`, channels [c_begin, c_end), through `stage`
// (STAGE_INDEX(blockDim.x * RUN_PIXELS) words of shared memory). Every thread of the block must call it.
template <typename Layout, typename Count>
__device__ void accumulate_pixels(const int* __restrict__ labels, const typename Layout::Value* __restrict__ values,
                                  long long image, int channels, long long pixels, int num_superpixels,
                                  long long begin, long long end, int c_begin, int c_end, Bins<Count> bins,
                                  unsigned int* bad_label, float* stage) {
    int* stage_ids = (int*)stage;
    const int stage_pixels = blockDim.x * RUN_PIXELS;
    const int run = threadIdx.x * RUN_PIXELS;  // this thread's run within a stage
    for (long long base = begin; base < end; base += stage_pixels) {
        for (int i = threadIdx.x; i < stage_pixels; i += blockDim.x) {  // coalesced: thread t reads pixel base + t
            int id = -1;  // -1: past the end, or an id out of range
            if (base + i < end) {
                const int label = labels[image * pixels + base + i];
                if (label >= 0 && label < num_superpixels) id = label;
                else *bad_label = 1u;  // every writer stores the same value
            }
            stage_ids[STAGE_INDEX(i)] = id;
        }
        __syncthreads();
        int ids[RUN_PIXELS];
        for (int i = 0; i < RUN_PIXELS; ++i) ids[i] = stage_ids[STAGE_INDEX(run + i)];
        int current = ids[0];
        unsigned int count = 0;
        for (int i = 0; i < RUN_PIXELS; ++i) {
            if (ids[i] != current) {
                add_count(bins, current, count);
                current = ids[i];
                count = 0;
            }
            ++count;
        }
        add_count(bins, current, count);
        for (int c = c_begin; c < c_end; ++c) {
            __syncthreads();  // every thread has read the ids, or the previous channel's values
            for (int i = threadIdx.x; i < stage_pixels; i += blockDim.x) {
                stage[STAGE_INDEX(i)] = base + i < end ? Layout::load(values, image, c, base + i, channels, pixels)
                                                       : 0.0f;
            }
            __syncthreads();
            current = ids[0];
            double sum = 0.0;
            for (int i = 0; i < RUN_PIXELS; ++i) {
                if (ids[i] != current) {
                    add_sum_to(bins.sums, bins.sum_stride, bins.first_channel, current, c, sum);
                    current = ids[i];
                    sum = 0.0;
                }
                sum += (double)stage[STAGE_INDEX(run + i)];
            }
            add_sum_to(bins.sums, bins.sum_stride, bins.first_channel, current, c, sum);
        }
        __syncthreads();  // the next stage overwrites the buffer
    }
}

template <typename Layout>
__device__ void pool_accumulate(const int* __restrict__ labels, const typename Layout::Value* __restrict__ values,
                                int channels, long long pixels, int num_superpixels, long long tile, int chunk,
                                int privatised, double* __restrict__ sums, unsigned long long* __restrict__ counts,
                                unsigned int* __restrict__ bad_label) {
    // Shared memory: [sums: S * width doubles][counts: S uint32] when privatised, then the staging buffer.
    extern __shared__ double pool_shared[];
    const long long image = blockIdx.y;
    const int c_begin = blockIdx.z * chunk;
    const int c_end = c_begin + chunk < channels ? c_begin + chunk : channels;
    const long long begin = blockIdx.x * tile;
    const long long end = begin + tile < pixels ? begin + tile : pixels;
    const bool counting = blockIdx.z == 0;  // one chunk counts pixels for all
    double* image_sums = sums + image * num_superpixels * channels;
    unsigned long long* image_counts = counts + image * num_superpixels;

    if (!privatised) {
        Bins<unsigned long long> global_bins = {image_sums, counting ? image_counts : nullptr, channels, 0};
        accumulate_pixels<Layout>(labels, values, image, channels, pixels, num_superpixels, begin, end, c_begin,
                                  c_end, global_bins, bad_label, (float*)pool_shared);
        return;
    }

    const int width = c_end - c_begin;
    double* shared_sums = pool_shared;
    unsigned int* shared_counts = (unsigned int*)(pool_shared + (long long)num_superpixels * width);
    float* stage = (float*)(shared_counts + num_superpixels);
    for (int i = threadIdx.x; i < num_superpixels * width; i += blockDim.x) shared_sums[i] = 0.0;
    for (int i = threadIdx.x; i < num_superpixels; i += blockDim.x) shared_counts[i] = 0u;
    __syncthreads();

    // Every chunk counts into shared memory: the counts tell which bins this block touched.
    Bins<unsigned int> shared_bins = {shared_sums, shared_counts, width, c_begin};
    accumulate_pixels<Layout>(labels, values, image, channels, pixels, num_superpixels, begin, end, c_begin, c_end,
                              shared_bins, bad_label, stage);
    __syncthreads();

    for (int s = threadIdx.x; s < num_superpixels; s += blockDim.x) {
        const unsigned int n = shared_counts[s];
        if (n == 0) continue;
        if (counting) atomicAdd(&image_counts[s], (unsigned long long)n);
        for (int c = c_begin; c < c_end; ++c) {
            atomicAdd(&image_sums[(long long)s * channels + c], shared_sums[(long long)s * width + c - c_begin]);
        }
    }
}

extern "C" __global__ void pool_accumulate_planar_f32(const int* labels, const float* values, int channels,
                                                      long long pixels, int num_superpixels, long long tile,
                                                      int chunk, int privatised, double* sums,
                                                      unsigned long long* counts, unsigned int* bad_label) {
    pool_accumulate<PlanarF32>(labels, values, channels, pixels, num_superpixels, tile, chunk, privatised, sums,
                               counts, bad_label);
}

extern "C" __global__ void pool_accumulate_interleaved_u8(const int* labels, const unsigned char* values,
                                                          int channels, long long pixels, int num_superpixels,
                                                          long long tile, int chunk, int privatised, double* sums,
                                                          unsigned long long* counts, unsigned int* bad_label) {
    pool_accumulate<InterleavedU8>(labels, values, channels, pixels, num_superpixels, tile, chunk, privatised,
                                   sums, counts, bad_label);
}

// means[i] = float32(sums[i] / counts[i / channels]), 0 for empty superpixels; `bins` = B * S.
extern "C" __global__ void pool_means(const double* sums, const unsigned long long* counts, float* means,
                                      long long bins, int channels) {
    const long long total = bins * channels;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const unsigned long long n = counts[i / channels];
        means[i] = n ? (float)(sums[i] / (double)n) : 0.0f;
    }
}

// The kernels a host build exports (see host_shim.h).
#define SUPERPIXEL_POOL_KERNELS(X) X(pool_accumulate_planar_f32) X(pool_accumulate_interleaved_u8) X(pool_means)
