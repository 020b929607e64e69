// Reading a float32 array of any strides as row-major values, inside a primitive's CPU task.
//
// The primitives here read their inputs as contiguous rows. Asking MLX for a contiguous input
// (mx::contiguous) would add a graph node per input, and on these CPUs each node of a decode
// step costs dispatch time; so a task copies an input itself in the rare case it is strided.
#pragma once

#include <cstdint>
#include <vector>

#include "mlx/array.h"

namespace psilonet_qmm {

// a's values in row-major order into dst (a.size() floats).
inline void copy_row_major(const mlx::core::array& a, float* dst) {
  const int nd = a.ndim();
  const float* src = a.data<float>();
  if (nd == 0) {
    dst[0] = src[0];
    return;
  }
  const int inner = a.shape(nd - 1);
  const int64_t step = a.strides(nd - 1), rows = inner ? static_cast<int64_t>(a.size()) / inner : 0;
  std::vector<int> index(nd - 1, 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t offset = 0;
    for (int ax = 0; ax < nd - 1; ++ax) offset += index[ax] * a.strides(ax);
    for (int k = 0; k < inner; ++k) dst[r * inner + k] = src[offset + k * step];
    for (int ax = nd - 2; ax >= 0 && ++index[ax] == a.shape(ax); --ax) index[ax] = 0;
  }
}

// A pointer to a's values in row-major order: a's own data, or a copy held by `keep`.
inline const float* row_major(const mlx::core::array& a, std::vector<float>& keep) {
  if (a.flags().row_contiguous) return a.data<float>();
  keep.resize(a.size());
  copy_row_major(a, keep.data());
  return keep.data();
}

}  // namespace psilonet_qmm
