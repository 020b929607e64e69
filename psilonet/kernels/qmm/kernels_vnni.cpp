// AVX-512 VNNI kernels on 256-bit registers (vpdpbusd for int8 dot products); compiled with
// -mavx2 -mfma -mavx512f -mavx512vl -mavx512vnni, called only where the CPU has them.
#define QMM_VNNI 1
#define QMM_FN rows_vnni
#include "simd_rows.inc"
#define QMM_PANEL_FN panel_rows_vnni
#include "panel_rows.inc"
