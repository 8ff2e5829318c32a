// Fused CPU kernels for selective relevance (SPEC §1), called through ctypes from selective.py.
//
// Why a compiled kernel: on a CPU the operator is memory-bound, and composing it from tensor ops costs a
// dozen passes over the clip (channel sum, padding, temporal difference, four shifted adds, |.|, mean,
// deviations, norm, min, max, mask, multiply) plus a fixed cost per op. Here the temporal edge map G is
// built plane by plane from a ring of three channel-summed frames, with the spatial [1,2,1] x [1,2,1]
// smoothing done row by row in L1, and the statistics of each plane taken while it is still in cache; the
// mask-multiply is one more pass, by the thread that has just read the same frames. The library is built when
// the package is installed (setup.py), never at import or first use; without it selective.py falls back to
// the tensor-op implementation.
//
// Threads: OpenMP. The library links libgomp.so.1, which resolves to the copy PyTorch has already loaded,
// so it shares PyTorch's thread pool (no oversubscription); the caller passes torch.get_num_threads().
//
// Layout: relevance R (B, C, T, H, W) and G (B, T, H, W), C-contiguous. Padding of S = R.sum(C) by one voxel
// on every side: replicate (1) or zeros (0). G[t] = |B(S[t-1] - S[t+1])| with B the [1,2,1] x [1,2,1]
// spatial smoothing, i.e. the absolute correlation of S with the 3x3x3 Sobel kernel h_t of SPEC §1.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// Statistics of one plane of G, all in double: sum, sum of squared deviations from the plane's mean, min, max. gradient() combines a clip's planes with Chan et
// al.'s formula for parallel variance, so the clip's std needs no extra pass over G.
struct Stats {
  double sum, m2, lo, hi;
};

template <typename T>
void channel_sum(const T* clip, int64_t channels, int64_t channel_stride, int64_t n, T* __restrict dst) {
  if (channels == 1) {
    std::memcpy(dst, clip, static_cast<size_t>(n) * sizeof(T));
    return;
  }
  const T* __restrict first = clip;
  const T* __restrict second = clip + channel_stride;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = first[i] + second[i];
  for (int64_t c = 2; c < channels; ++c) {  // ((R0 + R1) + R2) + ..., the order of the tensor-op path
    const T* __restrict src = clip + c * channel_stride;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }
}

// One row of D = S[t-1] - S[t+1]; a null plane is zero padding.
template <typename T>
void difference_row(const T* prev, const T* next, int64_t y, int64_t w, T* __restrict out) {
  if (prev && next) {
    const T* __restrict a = prev + y * w;
    const T* __restrict b = next + y * w;
#pragma omp simd
    for (int64_t x = 0; x < w; ++x) out[x] = a[x] - b[x];
  } else if (prev) {
    std::memcpy(out, prev + y * w, static_cast<size_t>(w) * sizeof(T));
  } else if (next) {
    const T* __restrict b = next + y * w;
#pragma omp simd
    for (int64_t x = 0; x < w; ++x) out[x] = -b[x];
  } else {
    for (int64_t x = 0; x < w; ++x) out[x] = T(0);
  }
}

// G plane t from S[t-1] (prev) and S[t+1] (next): rows of D in a ring of three, vertical [1,2,1] into a row
// padded by one element each side, horizontal [1,2,1] and |.| into g. Returns the plane's Stats.
template <typename T>
Stats gradient_plane(const T* prev, const T* next, int64_t h, int64_t w, bool replicate, T* rows, T* g) {
  T* ring[3] = {rows, rows + w, rows + 2 * w};
  T* zero_row = rows + 3 * w;   // w zeros (zero padding in y)
  T* v = rows + 4 * w;          // w + 2: v[-1], v[0..w-1], v[w]
  for (int64_t x = 0; x < w; ++x) zero_row[x] = T(0);
  // ring[1] = D row y, ring[2] = D row y + 1; D row -1 is replicate ? D row 0 : zeros
  difference_row(prev, next, 0, w, ring[1]);
  double sum = 0.0;
  for (int64_t y = 0; y < h; ++y) {
    const T* up = y > 0 ? ring[0] : (replicate ? ring[1] : zero_row);
    const T* mid = ring[1];
    const T* down;
    if (y + 1 < h) {
      difference_row(prev, next, y + 1, w, ring[2]);
      down = ring[2];
    } else {
      down = replicate ? ring[1] : zero_row;
    }
    T* __restrict vv = v + 1;
#pragma omp simd
    for (int64_t x = 0; x < w; ++x) vv[x] = up[x] + T(2) * mid[x] + down[x];
    v[0] = replicate ? v[1] : T(0);
    v[w + 1] = replicate ? v[w] : T(0);
    T* __restrict gr = g + y * w;
    double row_sum = 0.0;  // double: a float32 row of large finite values must not overflow to inf
#pragma omp simd reduction(+ : row_sum)
    for (int64_t x = 0; x < w; ++x) {
      const T value = std::fabs(v[x] + T(2) * v[x + 1] + v[x + 2]);
      gr[x] = value;
      row_sum += static_cast<double>(value);
    }
    sum += row_sum;
    T* recycled = ring[0];
    ring[0] = ring[1];
    ring[1] = ring[2];
    ring[2] = recycled;
  }
  // second pass over the plane (still in cache): squared deviations from the plane mean, min, max
  const int64_t n = h * w;
  const double mean = sum / static_cast<double>(n);
  double m2 = 0.0;
  double lo = static_cast<double>(g[0]), hi = lo;
#pragma omp simd reduction(+ : m2) reduction(min : lo) reduction(max : hi)
  for (int64_t i = 0; i < n; ++i) {
    const double value = static_cast<double>(g[i]);
    const double dev = value - mean;
    m2 += dev * dev;
    lo = value < lo ? value : lo;
    hi = value > hi ? value : hi;
  }
  return {sum, m2, lo, hi};
}

// G planes [t0, t1) of one clip (channels, frames, h, w) into g_clip (frames * h * w) and their Stats. The
// thread keeps the channel-summed frames t - 1, t, t + 1 in a ring in its scratch (scratch_per_thread elements).
template <typename T>
void gradient_range(const T* clip, int64_t channels, int64_t frames, int64_t h, int64_t w, bool replicate,
                    int64_t t0, int64_t t1, T* g_clip, Stats* plane_stats, T* scratch) {
  if (t0 >= t1) return;
  const int64_t n = h * w;
  T* planes[3] = {scratch, scratch + n, scratch + 2 * n};
  T* rows = scratch + 3 * n;
  auto frame = [&](int64_t t, T* dst) -> const T* {  // S[t] with the temporal padding, or null for zeros
    if (t < 0 || t >= frames) {
      if (!replicate) return nullptr;
      t = t < 0 ? 0 : frames - 1;
    }
    channel_sum(clip + t * n, channels, frames * n, n, dst);
    return dst;
  };
  const T* prev = frame(t0 - 1, planes[0]);
  const T* cur = frame(t0, planes[1]);
  for (int64_t t = t0; t < t1; ++t) {
    const T* next = frame(t + 1, planes[2]);
    plane_stats[t] = gradient_plane(prev, next, h, w, replicate, rows, g_clip + t * n);
    T* recycled = planes[0];
    planes[0] = planes[1];
    planes[1] = planes[2];
    planes[2] = recycled;
    prev = cur;  // S[t] (now in planes[0]), or null for zero padding
    cur = next;  // S[t + 1] (now in planes[1])
  }
}

int64_t scratch_per_thread(int64_t h, int64_t w) { return 3 * h * w + 5 * w + 2; }

// Frames [t0, t1) of `frames` handled by thread `tid` of `nthreads` (contiguous ranges, some may be empty).
void frame_range(int64_t frames, int tid, int nthreads, int64_t* t0, int64_t* t1) {
  const int64_t per = (frames + nthreads - 1) / nthreads;
  *t0 = tid * per < frames ? tid * per : frames;
  *t1 = *t0 + per < frames ? *t0 + per : frames;
}

// A clip's statistics of G from its planes' (Chan et al.): mean, M2 = sum_p [m2_p + n (mean_p - mean)^2], min, max.
void combine(const Stats* planes, int64_t frames, int64_t n, double* out) {
  double sum = 0.0, lo = planes[0].lo, hi = planes[0].hi;
  for (int64_t t = 0; t < frames; ++t) {
    sum += planes[t].sum;
    lo = planes[t].lo < lo ? planes[t].lo : lo;
    hi = planes[t].hi > hi ? planes[t].hi : hi;
  }
  const double mean = sum / static_cast<double>(frames * n);
  double m2 = 0.0;
  for (int64_t t = 0; t < frames; ++t) {
    const double dev = planes[t].sum / static_cast<double>(n) - mean;
    m2 += planes[t].m2 + static_cast<double>(n) * dev * dev;
  }
  out[0] = mean;
  out[1] = m2;
  out[2] = lo;
  out[3] = hi;
}

// G for every clip of a batch (nb, channels, frames, h, w) into g (nb, frames, h, w) and per-clip statistics
// clip_stats (nb x [mean, m2, min, max]). Work items are (clip, range of frames).
template <typename T>
void gradient(const T* relevance, int64_t nb, int64_t channels, int64_t frames, int64_t h, int64_t w,
              bool replicate, T* g, double* clip_stats, Stats* plane_stats, T* scratch, int nthreads) {
  const int64_t n = h * w;
  const int parts = static_cast<int>(nb >= nthreads ? 1 : (nthreads + nb - 1) / nb);
  const int64_t items = nb * parts;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / parts;
    int64_t t0, t1;
    frame_range(frames, static_cast<int>(item % parts), parts, &t0, &t1);
    gradient_range(relevance + b * channels * frames * n, channels, frames, h, w, replicate, t0, t1,
                   g + b * frames * n, plane_stats + b * frames,
                   scratch + omp_get_thread_num() * scratch_per_thread(h, w));
  }
  for (int64_t b = 0; b < nb; ++b) combine(plane_stats + b * frames, frames, n, clip_stats + 4 * b);
}

// o[i] = r[i] * (g[i] > limit) for i in [start, stop).
template <typename T>
void mask_span(const T* __restrict r, const T* __restrict g, T limit, T* __restrict o, int64_t start, int64_t stop) {
#pragma omp simd
  for (int64_t i = start; i < stop; ++i) {
    const T keep = g[i] > limit;
    o[i] = r[i] * keep;
  }
}

#if defined(__AVX2__)
// float32 with AVX2: the same, with streaming stores (the output is not read again here, so writing it around
// the cache saves reading its lines first and keeps this thread's relevance and G in cache).
template <>
void mask_span<float>(const float* __restrict r, const float* __restrict g, float limit, float* __restrict o,
                      int64_t start, int64_t stop) {
  int64_t i = start;
  for (; i < stop && (reinterpret_cast<uintptr_t>(o + i) & 31) != 0; ++i) o[i] = r[i] * static_cast<float>(g[i] > limit);
  const __m256 lim = _mm256_set1_ps(limit);
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= stop; i += 8) {
    const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(g + i), lim, _CMP_GT_OQ), one);
    _mm256_stream_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(r + i), keep));
  }
  for (; i < stop; ++i) o[i] = r[i] * static_cast<float>(g[i] > limit);
  _mm_sfence();  // streaming stores are weakly ordered: make them visible before the threads' barrier
}
#endif

// Selective relevance of a batch in one parallel region, clip after clip: each thread computes G for its range
// of frames, one thread turns the clip's statistics into a threshold per sigma (thresholds of SPEC §1: sigma *
// unbiased std; inf for a constant G), then each thread masks the same frames of every channel, whose relevance
// it has just read (so it is still in its cache). out is (nsigma, nb, channels, frames, h, w). g_clip holds one
// clip's G; scratch scratch_per_thread elements per thread. Returns 0, or 1 + the first clip whose statistics
// are not finite (NaN or Inf in its relevance; that clip's output and the following ones are not written).
template <typename T>
int64_t selective(const T* relevance, int64_t nb, int64_t channels, int64_t frames, int64_t h, int64_t w,
                  bool replicate, const double* sigmas, int64_t nsigma, T* out, T* g_clip, Stats* plane_stats,
                  double* limits, T* scratch, int nthreads) {
  const int64_t n = h * w;
  const int64_t voxels = frames * n;
  int64_t status = 0;
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    int64_t t0, t1;
    frame_range(frames, tid, omp_get_num_threads(), &t0, &t1);
    T* mine = scratch + tid * scratch_per_thread(h, w);
    for (int64_t b = 0; b < nb; ++b) {
      const T* clip = relevance + b * channels * voxels;
      gradient_range(clip, channels, frames, h, w, replicate, t0, t1, g_clip, plane_stats, mine);
#pragma omp barrier
#pragma omp single
      {
        double stats[4];
        combine(plane_stats, frames, n, stats);
        const double mean = stats[0], m2 = stats[1];
        if (!std::isfinite(mean) || !std::isfinite(m2)) {
          status = 1 + b;
        } else {
          const bool constant = !(voxels > 1 && stats[3] > stats[2]);
          const double std_dev = constant ? 0.0 : std::sqrt(m2 / static_cast<double>(voxels - 1));
          for (int64_t s = 0; s < nsigma; ++s) limits[s] = constant ? INFINITY : sigmas[s] * std_dev;
        }
      }  // implicit barrier: status and limits are visible to every thread
      if (status != 0) break;
      for (int64_t s = 0; s < nsigma; ++s) {
        const T limit = static_cast<T>(limits[s]);
        for (int64_t c = 0; c < channels; ++c) {
          const T* __restrict r = clip + c * voxels;
          T* __restrict o = out + ((s * nb + b) * channels + c) * voxels;
          mask_span(r, g_clip, limit, o, t0 * n, t1 * n);
        }
      }
      // No barrier needed here: a thread reads and writes only its own frames of g_clip, and the next clip's
      // `single` waits at the barrier for every thread anyway.
    }
  }
  return status;
}

}  // namespace

#if defined(_WIN32)
#define MR_EXPORT __declspec(dllexport)
#else
#define MR_EXPORT __attribute__((visibility("default")))
#endif

extern "C" {

// Version of this C interface; _selective_kernel.py refuses a library built from another version (a stale build).
MR_EXPORT int64_t mr_abi_version() { return 1; }

// Scratch elements the kernels need per thread.
MR_EXPORT int64_t mr_scratch_per_thread(int64_t h, int64_t w) { return scratch_per_thread(h, w); }

static_assert(sizeof(Stats) == 4 * sizeof(double), "plane_stats holds 4 doubles per plane");

// plane_stats: 4 doubles per plane (nb * frames planes); clip_stats: 4 doubles per clip.
MR_EXPORT void mr_gradient_f32(const float* relevance, int64_t nb, int64_t channels, int64_t frames, int64_t h,
                               int64_t w, int replicate, float* g, double* clip_stats, void* plane_stats,
                               float* scratch, int nthreads) {
  gradient(relevance, nb, channels, frames, h, w, replicate != 0, g, clip_stats, static_cast<Stats*>(plane_stats),
           scratch, nthreads);
}

MR_EXPORT void mr_gradient_f64(const double* relevance, int64_t nb, int64_t channels, int64_t frames, int64_t h,
                               int64_t w, int replicate, double* g, double* clip_stats, void* plane_stats,
                               double* scratch, int nthreads) {
  gradient(relevance, nb, channels, frames, h, w, replicate != 0, g, clip_stats, static_cast<Stats*>(plane_stats),
           scratch, nthreads);
}

// plane_stats: 4 doubles per frame (one clip); limits: nsigma doubles; g_clip: frames * h * w elements.
MR_EXPORT int64_t mr_selective_f32(const float* relevance, int64_t nb, int64_t channels, int64_t frames, int64_t h,
                                   int64_t w, int replicate, const double* sigmas, int64_t nsigma, float* out,
                                   float* g_clip, void* plane_stats, double* limits, float* scratch, int nthreads) {
  return selective(relevance, nb, channels, frames, h, w, replicate != 0, sigmas, nsigma, out, g_clip,
                   static_cast<Stats*>(plane_stats), limits, scratch, nthreads);
}

MR_EXPORT int64_t mr_selective_f64(const double* relevance, int64_t nb, int64_t channels, int64_t frames, int64_t h,
                                   int64_t w, int replicate, const double* sigmas, int64_t nsigma, double* out,
                                   double* g_clip, void* plane_stats, double* limits, double* scratch,
                                   int nthreads) {
  return selective(relevance, nb, channels, frames, h, w, replicate != 0, sigmas, nsigma, out, g_clip,
                   static_cast<Stats*>(plane_stats), limits, scratch, nthreads);
}

}  // extern "C"
