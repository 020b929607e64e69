// AVX2 + FMA kernels (maddubs/madd for int8 dot products); compiled with -mavx2 -mfma.
#define QMM_VNNI 0
#define QMM_FN rows_avx2
#include "simd_rows.inc"
#define QMM_PANEL_FN panel_rows_avx2
#include "panel_rows.inc"
