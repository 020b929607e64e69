// Run-time ISA choice, the portable kernels, activation preparation and the thread pool.
#include "kernels.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace psilonet_qmm {

namespace {

constexpr int MAX_ROWS = 16;  // rows per kernel call: larger inputs run in slices of 16
constexpr int CHUNK = 16;     // the fewest output rows a thread takes at a time
constexpr int CHUNKS_PER_THREAD = 2;  // long runs of rows for the prefetch, yet some balancing

// Position of value k of a 32-block in kernel order (4-bit: even positions, then odd ones).
inline int kernel_pos(int bits, int k) {
  return bits == 4 ? (k & 1) * 16 + (k >> 1) : k;
}

inline uint32_t code(const uint32_t* row, int bits, int k) {
  const int per_word = 32 / bits;
  return (row[k / per_word] >> ((k % per_word) * bits)) & ((1u << bits) - 1);
}

using Kernel = void (*)(const Problem&, const Prep&, int, int, int, int, int);

struct Job {
  Problem p;
  Prep prep;
  Kernel kernel;
  int mode, chunks, chunk;
  void (*task)(const void*, int) = nullptr;  // parallel_for's work instead of a product
  const void* context = nullptr;
};

void run_chunk(const Job& job, int c) {
  if (job.task) return job.task(job.context, c);
  const int n0 = c * job.chunk, n1 = std::min(job.p.N, n0 + job.chunk);
  for (int m0 = 0; m0 < job.p.M; m0 += MAX_ROWS)
    job.kernel(job.p, job.prep, job.mode, n0, n1, m0, std::min(job.p.M, m0 + MAX_ROWS));
}

// A fixed pool of helpers for the calling thread. Chunks of output rows are claimed from one
// atomic word holding (job generation, next chunk), so a helper that wakes late finds the job
// over and claims nothing: the caller waits only for chunks a helper is actually computing, never
// for a helper to be scheduled (the machine is shared; a descheduled helper must not stall it).
class Pool {
 public:
  explicit Pool(int helpers) : helpers_(helpers) {
    for (int i = 0; i < helpers_; ++i) std::thread([this] { loop(); }).detach();
  }
  int size() const { return helpers_ + 1; }

  void run(const Job& job) {
    std::lock_guard<std::mutex> one_at_a_time(call_);
    if (helpers_ == 0) {
      for (int c = 0; c < job.chunks; ++c) run_chunk(job, c);
      return;
    }
    job_ = job;  // helpers copy it only after seeing the new generation (a seqlock: see claim)
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    // seq_cst on both sides (here and the helper's sleeping_ increment, then its state_ check):
    // either the helper sees the new generation or this sees it asleep and wakes it.
    state_.store(gen << 32, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> l(m_);
      cv_.notify_all();
    }
    int mine = 0;
    for (int c; (c = claim(gen, job.chunks)) >= 0; ++mine) run_chunk(job, c);
    done_.fetch_add(mine, std::memory_order_acq_rel);
    for (int spins = 0; done_.load(std::memory_order_acquire) < job.chunks; ++spins) relax(spins);
  }

 private:
  // The next chunk of generation `gen`, or -1 when that job has none left (or is over).
  int claim(uint64_t gen, int chunks) {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      if ((s >> 32) != gen || static_cast<int>(s & 0xffffffffu) >= chunks) return -1;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) return static_cast<int>(s & 0xffffffffu);
    }
  }

  // Pause first, then give the core away, so that on a loaded machine a waiting thread does
  // not hold the core that the thread it waits for needs.
  static void relax(int spins) {
#if defined(__x86_64__)
    if (spins < 2000) return _mm_pause();
#endif
    std::this_thread::yield();
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      // Spin a while after each job: a decode step's products follow each other within
      // microseconds, and waking a sleeping thread costs more than a small product.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(500);
      uint64_t gen;
      for (int spins = 1; (gen = state_.load(std::memory_order_acquire) >> 32) == seen; ++spins) {
        relax(spins);
        if (spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> l(m_);
          sleeping_.fetch_add(1);
          cv_.wait(l, [&] { return (state_.load(std::memory_order_acquire) >> 32) != seen; });
          sleeping_.fetch_sub(1);
        }
      }
      seen = gen;
      const Job job = job_;  // may be torn if a newer job is being written; claim() then fails
      int mine = 0;
      for (int c; (c = claim(gen, job.chunks)) >= 0; ++mine) run_chunk(job, c);
      if (mine) done_.fetch_add(mine, std::memory_order_acq_rel);
    }
  }

  const int helpers_;
  std::mutex call_, m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0}, sleeping_{0};
  Job job_{};
};

Pool& pool() {
  // Never destroyed: detached helpers outlive static destructors at exit.
  static Pool* p = [] {
    int n = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("PSILONET_QMM_THREADS")) n = std::atoi(env);
    return new Pool(std::clamp(n, 1, 64) - 1);
  }();
  return *p;
}

std::atomic<int> g_isa{-1};

}  // namespace

int detected_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")) return VNNI;
    return AVX2;
  }
#endif
  return PORTABLE;
}

int set_isa(int level) {
  const int v = std::clamp(level, 0, detected_isa());
  g_isa.store(v);
  return v;
}

int isa() {
  int v = g_isa.load();
  if (v < 0) {
    v = detected_isa();
    if (const char* env = std::getenv("PSILONET_QMM_ISA")) {
      if (!std::strcmp(env, "portable")) v = PORTABLE;
      else if (!std::strcmp(env, "avx2")) v = std::min(v, static_cast<int>(AVX2));
    }
    g_isa.store(v);
  }
  return v;
}

const char* isa_name(int level) {
  return level == VNNI ? "avx512-vnni" : level == AVX2 ? "avx2-fma" : "portable";
}

int num_threads() { return pool().size(); }

void parallel_for(int chunks, void (*task)(const void*, int), const void* context) {
  Job job{};
  job.chunks = chunks;
  job.task = task;
  job.context = context;
  pool().run(job);
}

void rows_portable(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1) {
  const int K = p.K, G = K / p.group, words = K * p.bits / 32;
  for (int n = n0; n < n1; ++n) {
    const uint32_t* wr = p.w + static_cast<int64_t>(n) * words;
    for (int m = m0; m < m1; ++m) {
      float total = 0.0f;
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
        for (int j = g * p.group / 32; j < (g + 1) * p.group / 32; ++j) {
          if (mode != FLOAT) {
            int32_t acc = 0;
            for (int k = 0; k < 32; ++k) {
              const int64_t at = (static_cast<int64_t>(j) * p.M + m) * 32 + kernel_pos(p.bits, k);
              acc += static_cast<int32_t>(code(wr, p.bits, j * 32 + k)) * (mode == INT8 ? q.xq[at] : q.xw[at]);
            }
            dot += static_cast<float>(acc) * q.dx[j * p.M + m];
          } else {
            for (int k = 0; k < 32; ++k)
              dot += static_cast<float>(code(wr, p.bits, j * 32 + k)) *
                     q.xf[(static_cast<int64_t>(j) * p.M + m) * 32 + kernel_pos(p.bits, k)];
          }
        }
        total += p.scales[static_cast<int64_t>(n) * G + g] * dot +
                 p.biases[static_cast<int64_t>(n) * G + g] * q.xsum[m * G + g];
      }
      p.out[static_cast<int64_t>(m) * p.N + n] = total;
    }
  }
}

void panel_rows_portable(const Problem& p, const Prep& q, int, int n0, int n1, int m0, int m1) {
  // The SIMD panel kernels' order of float operations, one output at a time.
  const int K = p.K, G = K / p.group, B = K / 32, block_bytes = p.bits * 32;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(p.w);
  for (int n = n0; n < n1; ++n) {
    const int64_t panel = n / 8;
    const int t = n % 8;
    for (int m = m0; m < m1; ++m) {
      float acc = 0.0f;
      for (int g = 0; g < G; ++g) {
        const float s = p.scales[(panel * G + g) * 8 + t];
        for (int j = g * p.group / 32; j < (g + 1) * p.group / 32; ++j) {
          const uint8_t* wb = bytes + (panel * B + j) * block_bytes;
          const int16_t* xb = q.xw + (static_cast<int64_t>(j) * p.M + m) * 32;
          int32_t d = 0;
          for (int k = 0; k < 32; ++k) {
            int c;
            if (p.bits == 4) {
              const uint8_t byte = wb[16 * (k / 4) + 2 * t + k % 2];
              c = (k % 4) < 2 ? byte & 0x0F : byte >> 4;
            } else {
              c = wb[16 * (k / 2) + 2 * t + k % 2];
            }
            d += c * xb[k];
          }
          acc = std::fma(static_cast<float>(d), s * q.dx[j * p.M + m], acc);
        }
        acc = std::fma(p.biases[(panel * G + g) * 8 + t], q.xsum[m * G + g], acc);
      }
      p.out[static_cast<int64_t>(m) * p.N + n] = acc;
    }
  }
}

void qmm(const Problem& p, int mode) {
  const int M = p.M, K = p.K, G = K / p.group, B = K / 32;
  // Scratch reused across calls (one MLX CPU stream thread calls at a time per stream).
  thread_local std::vector<float> xf, dx, xsum;
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<int16_t> xw;
  xsum.assign(static_cast<size_t>(M) * G, 0.0f);
  xf.resize(static_cast<size_t>(M) * K);
  if (mode == INT8) xq.resize(static_cast<size_t>(M) * K);
  if (mode == INT16) xw.resize(static_cast<size_t>(M) * K);
  if (mode != FLOAT) dx.resize(static_cast<size_t>(M) * B);
  const float top = mode == INT8 ? 127.0f : 32767.0f;
  thread_local std::vector<float> row;
  row.resize(K);
  for (int m = 0; m < M; ++m) {
    // Rows are gathered once (kernel order, block-major: see Prep), so any strides are as fast
    // as contiguous.
    for (int k = 0; k < K; ++k) row[k] = p.x[m * p.x_row + k * p.x_col];
    // Float mode: exact group sums. Int8 mode: sums of the quantized values, so that bias and
    // codes see the same activations and the error is sum_k w_k e_k with the small dequantized w,
    // not with the codes' large common offset s * q (the bias cancels most of it).
    if (mode == FLOAT)
      for (int k = 0; k < K; ++k) xsum[m * G + k / p.group] += row[k];
    for (int j = 0; j < B; ++j) {
      const int64_t at = (static_cast<int64_t>(j) * M + m) * 32;
      float* dst = xf.data() + at;
      for (int k = 0; k < 32; ++k) dst[p.panel ? k : kernel_pos(p.bits, k)] = row[j * 32 + k];
      if (mode != FLOAT) {
        float amax = 0.0f;
        for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(dst[k]));
        const float d = amax / top, inv = amax > 0.0f ? top / amax : 0.0f;
        dx[j * M + m] = d;
        int32_t total = 0;
        for (int k = 0; k < 32; ++k) {
          const int v = static_cast<int>(std::nearbyint(dst[k] * inv));
          if (mode == INT8) xq[at + k] = static_cast<int8_t>(v);
          else xw[at + k] = static_cast<int16_t>(v);
          total += v;
        }
        xsum[m * G + j * 32 / p.group] += d * static_cast<float>(total);
      }
    }
  }
  const Prep prep{xf.data(), mode == INT8 ? xq.data() : nullptr, mode == INT16 ? xw.data() : nullptr,
                  mode != FLOAT ? dx.data() : nullptr, xsum.data()};
  Kernel kernel = p.panel ? panel_rows_portable : rows_portable;
#if defined(__x86_64__)
  const int level = isa();
  if (level == VNNI) kernel = p.panel ? panel_rows_vnni : rows_vnni;
  else if (level == AVX2) kernel = p.panel ? panel_rows_avx2 : rows_avx2;
#endif
  // Few long chunks: a thread's rows are consecutive, so each tile can prefetch the ones after
  // it. Two per thread still let the caller take over a helper's share when it is descheduled.
  const int parts = CHUNKS_PER_THREAD * pool().size();
  const int chunk = std::max(CHUNK, (p.N + parts - 1) / parts + 15) / 16 * 16;
  const Job job{p, prep, kernel, mode, (p.N + chunk - 1) / chunk, chunk};
  // Tiny products are not worth waking the other threads.
  if (static_cast<int64_t>(p.N) * K * M < (1 << 15)) {
    for (int c = 0; c < job.chunks; ++c) run_chunk(job, c);
  } else {
    pool().run(job);
  }
}

}  // namespace psilonet_qmm
