/* Shared helpers of the Helium (MVE) kernel set: private to firmware/kernels/mve (README.md there).
 *
 * Every matvec here computes the reference's per-group integer sums exactly with MVE integer dot
 * products (VMLADAVA.S8: 16 int8 products added to an int32 in one instruction, no rounding, no
 * saturation) and keeps the reference's float part in its order:
 *   acc = acc + ((float)isum * scale) * xs, groups in order, per row, from 0.0f.
 * Codes with a zero point are hoisted: isum = sum c * xq - z * sum xq (exact in int32), with the
 * groups' activation sums computed once per call, TW_CHUNK groups at a time (on the stack); a row's
 * float sum carries over between chunks through out[r], exactly. */
#ifndef TW_KERNELS_MVE_H
#define TW_KERNELS_MVE_H

#include <arm_mve.h>

#include "kernels.h"

#if !defined(__ARM_FEATURE_MVE)
#error "kernels/mve needs Helium (MVE): build with -mcpu=cortex-m55 or -march=armv8.1-m.main+mve"
#endif

#define TW_ALWAYS_INLINE static inline __attribute__((always_inline))
#define TW_CHUNK 16u

/* Activation sums of n groups of gs elements (gs a multiple of 16) starting at x. */
TW_ALWAYS_INLINE void tw_group_sums(int32_t *sums, const int8_t *x, uint32_t n, uint32_t gs) {
    for (uint32_t g = 0; g < n; g++) {
        int32_t s = 0;
        for (uint32_t j = 0; j < gs; j += 16) s = vaddvaq_s8(s, vldrbq_s8(x + j));
        sums[g] = s;
        x += gs;
    }
}

/* One group of one row: the reference's float step with isum = s - z * sum. */
TW_ALWAYS_INLINE float tw_group_step(float acc, int32_t s, int32_t z, int32_t sum, float scale, float xs) {
    return acc + ((float)(s - z * sum) * scale) * xs;
}

/* A kernel's inner part: groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2;
 * the two rows share each activation vector); sums[i] is the activation sum of group g0 + i. */
typedef void tw_rows_fn(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                        uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums);

TW_ALWAYS_INLINE void tw_rows_by_two(float *out, const int8_t *xq, const float *xs, const tw_tensor *w,
                                     tw_rows_fn *rows, int asym, uint32_t g0, uint32_t n_groups,
                                     const int32_t *sums) {
    uint32_t r = 0;
    for (; r + 2 <= w->rows; r += 2) rows(out, xq, xs, w, r, 2, asym, g0, n_groups, sums);
    if (r < w->rows) rows(out, xq, xs, w, r, 1, asym, g0, n_groups, sums);
}

/* The matvec around a kernel's rows: the groups TW_CHUNK at a time with their activation sums, every
 * row per chunk. A kernel whose symmetric codes need no zero point (8-bit) says so with sym_zero = 0:
 * one pass over all groups, no sums. */
TW_ALWAYS_INLINE void tw_matvec_chunks(float *out, const int8_t *xq, const float *xs, const tw_tensor *w,
                                       tw_rows_fn *rows, int sym_zero) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs;
    int asym = w->scheme == TW_SCHEME_ASYMMETRIC;
    if (!asym && !sym_zero) {
        tw_rows_by_two(out, xq, xs, w, rows, 0, 0, ng, 0);
        return;
    }
    int32_t sums[TW_CHUNK];
    for (uint32_t g0 = 0; g0 < ng; g0 += TW_CHUNK) {
        uint32_t n = ng - g0 < TW_CHUNK ? ng - g0 : TW_CHUNK;
        tw_group_sums(sums, xq + g0 * gs, n, gs);
        if (asym)
            tw_rows_by_two(out, xq, xs, w, rows, 1, g0, n, sums);
        else
            tw_rows_by_two(out, xq, xs, w, rows, 0, g0, n, sums);
    }
}

#endif
