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

#include "../driver.h"   /* the group step and the chunked matvec around a kernel's rows */

#endif
