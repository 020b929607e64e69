// x @ W.T for a few rows with W in MLX's affine quantized layout, on the CPU.
//
// Layout (as mlx/backend/cpu/quantized.cpp reads it): row n of W is K values packed into
// K*bits/32 uint32 words, value k in bits [(k % (32/bits))*bits, +bits) of word k / (32/bits),
// so on a little-endian machine 4-bit value 2j is the low nibble of byte j and 2j+1 its high
// nibble, and 8-bit value k is byte k. Each group of `group` consecutive values of a row has a
// scale and a bias: w[n, k] = scales[n, k / group] * q[n, k] + biases[n, k / group].
//
// The sum is regrouped per group as s * sum_k(q_k x_k) + b * sum_k(x_k), so the weights are
// never dequantized: the inner loop multiplies the raw codes with the activations, either in
// float32 ("float" mode) or with each activation row quantized in blocks of 32 (one float scale
// per block) and integer dot products: to int8 as llama.cpp does ("int8": u8 x s8 products),
// or to int16 ("int16": 4/8-bit codes widened to int16, s16 x s16 products; its rounding is 1/258
// of int8's). In the integer modes the group sums are those of the quantized activations (qmm()).
//
// Panel layout (int16 mode only; psilonet.kernels.qmm.pack_panels makes it from MLX's): the
// same codes, scales and biases regrouped by panels of eight output rows, so that one register
// lane serves one output row (panel_rows.inc). N must be a multiple of 8. Panel P's bytes run
// block by block (K / 32 blocks of 8 * 32 * bits / 8 bytes), each block in chunks of 16 bytes
// in which bytes 2t and 2t+1 belong to row 8P + t:
//   4-bit, chunk c (8 per block): byte 2t+e = q[4c+e] | q[4c+2+e] << 4 (positions in the block);
//   8-bit, chunk i (16 per block): byte 2t+e = q[2i+e].
// Scales and biases are (N / 8, K / group, 8): the eight rows of a panel side by side.
#pragma once

#include <cstdint>

namespace psilonet_qmm {

struct Problem {
  const float* x;         // (M, K): x[m, k] at x[m * x_row + k * x_col]
  int64_t x_row, x_col;
  const uint32_t* w;      // (N, K * bits / 32)
  const float* scales;    // (N, K / group)
  const float* biases;    // (N, K / group)
  float* out;             // (M, N)
  int M, N, K, bits, group;
  bool panel = false;     // w, scales and biases in the panel layout (int16 mode)
};

// Per-call activations prepared once and shared by every thread, block-major: block j of row m
// starts at (j * M + m) * 32, so a kernel reads the rows of one block from one pointer. For
// 4-bit weights each block of 32 is stored permuted (even positions, then odd ones) to match how
// the nibbles unpack; for the panel layout every block is in its natural order.
struct Prep {
  const float* xf;        // (K / 32, M, 32) float activations in kernel order
  const int8_t* xq;       // (K / 32, M, 32) int8 activations in kernel order (int8 mode)
  const int16_t* xw;      // (K / 32, M, 32) int16 activations in kernel order (int16 mode)
  const float* dx;        // (K / 32, M) integer block scales (int8 and int16 modes)
  const float* xsum;      // (M, K / group) exact sums of x per group
};

enum Mode : int { FLOAT = 0, INT8 = 1, INT16 = 2 };
enum Isa : int { PORTABLE = 0, AVX2 = 1, VNNI = 2 };

// The kernels fill out[m, n] for rows m in [m0, m1) (at most 16 of them) and n in [n0, n1).
void rows_portable(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1);
#if defined(__x86_64__)
void rows_avx2(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1);
void rows_vnni(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1);
#endif
// The same for the panel layout (n0 and n1 multiples of 8).
void panel_rows_portable(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1);
#if defined(__x86_64__)
void panel_rows_avx2(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1);
void panel_rows_vnni(const Problem& p, const Prep& q, int mode, int n0, int n1, int m0, int m1);
#endif

// The best path this CPU supports (checked at run time), and the one in effect.
int detected_isa();
int isa();
int set_isa(int level);  // capped at detected_isa(); returns the level in effect
const char* isa_name(int level);
int num_threads();
// task(context, c) for every c in [0, chunks) on the product's thread pool, the caller included;
// returns when all have run. One call at a time (the pool serialises callers).
void parallel_for(int chunks, void (*task)(const void*, int), const void* context);

void qmm(const Problem& p, int mode);

}  // namespace psilonet_qmm
