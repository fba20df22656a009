/* Shared helpers of the scalar kernel set: private to firmware/kernels/scalar (README.md there).
 *
 * Portable C for 32-bit cores without packed SIMD (RV32IM/IMC, Armv6-M): the reference's integer
 * sums, evaluated exactly with fewer instructions — a row's codes read a word at a time and
 * unpacked with shifts, the zero point hoisted out of the sum (isum = sum c * xq - z * sum xq, exact
 * in int32, with the groups' activation sums computed once per call), two rows sharing each
 * activation load — and the reference's float part in its order (driver.h). */
#ifndef TW_KERNELS_SCALAR_H
#define TW_KERNELS_SCALAR_H

#include <stdint.h>

#include "kernels.h"

#define TW_ALWAYS_INLINE static inline __attribute__((always_inline))
#define TW_CHUNK 16u

/* A word read of 4 bytes of codes: the rows are 4-byte aligned (kernels.h). */
typedef uint32_t __attribute__((may_alias, aligned(4))) tw_word;

TW_ALWAYS_INLINE uint32_t tw_load4(const void *p) { return *(const tw_word *)p; }

/* Activation sums of n groups of gs elements starting at x. */
TW_ALWAYS_INLINE void tw_group_sums(int32_t *sums, const int8_t *x, uint32_t n, uint32_t gs) {
    for (uint32_t g = 0; g < n; g++) {
        int32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x++) s += *x;
        sums[g] = s;
    }
}

#include "../driver.h"   /* the group step and the chunked matvec around a kernel's rows */

#endif
