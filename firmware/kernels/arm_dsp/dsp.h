/* Helpers of the arm_dsp kernel set: the Armv7E-M / Armv8-M DSP extension through ACLE
 * (<arm_acle.h>: __smlad, __sxtb16, __uxtb16, __usada8) plus, as one-instruction inline asm, what
 * GCC 12 lacks: its arm_acle.h has no __ror / __pkhbt / __pkhtb, and GCC folds neither a C rotate
 * into SXTB16's ROR operand nor a shift into AND's operand when the mask is an immediate.
 *
 * Packed notation: (a, b) is a word holding int16 a in bits 0-15 and b in bits 16-31;
 * SMLAD(p, q, acc) = acc + p.lo * q.lo + p.hi * q.hi, exact (no saturation, no rounding). */
#ifndef TW_ARM_DSP_H
#define TW_ARM_DSP_H

#if !defined(__ARM_FEATURE_DSP)
#error "firmware/kernels/arm_dsp needs the Arm DSP extension (Cortex-M4/M7/M33...): use kernels: ref"
#endif
#include <arm_acle.h>
#include <stdint.h>

#include "kernels.h"

#define TW_ALWAYS_INLINE static inline __attribute__((always_inline))

/* A word read of 4 bytes of codes or activations: the rows and xq are 4-byte aligned (kernels.h). */
typedef uint32_t __attribute__((may_alias, aligned(4))) tw_word;

TW_ALWAYS_INLINE uint32_t tw_load4(const void *p) { return *(const tw_word *)p; }

/* The same at any address (a plain LDR: Armv7-M / Armv8-M mainline read unaligned words). */
typedef uint32_t __attribute__((may_alias, aligned(1))) tw_uword;

TW_ALWAYS_INLINE uint32_t tw_load4_unaligned(const void *p) { return *(const tw_uword *)p; }

/* bytes (b0, b1, b2, b3) -> (b0, b2) and (b1, b3) (SXTB16/UXTB16, plain and with ROR #8),
 * sign- or zero-extended to int16 */
TW_ALWAYS_INLINE int32_t tw_sxtb16(uint32_t x) { return __sxtb16((int8x4_t)x); }
TW_ALWAYS_INLINE int32_t tw_uxtb16(uint32_t x) { return (int32_t)__uxtb16(x); }

TW_ALWAYS_INLINE int32_t tw_sxtb16_ror8(uint32_t x) {
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

TW_ALWAYS_INLINE int32_t tw_uxtb16_ror8(uint32_t x) {
    int32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* (a.lo, b.lo) and (a.hi, b.hi): PKHBT / PKHTB of two words' half-words */
TW_ALWAYS_INLINE uint32_t tw_pkhbt(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

TW_ALWAYS_INLINE uint32_t tw_pkhtb(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__("pkhtb %0, %2, %1, asr #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* (a.lo, (b << n).hi) and ((b >> n).lo, a.hi): PKHBT / PKHTB with another shift (n a literal) */
#define TW_PKHBT_LSL(a, b, n)                                                                      \
    __extension__({                                                                              \
        uint32_t r_;                                                                             \
        __asm__("pkhbt %0, %1, %2, lsl #" #n : "=r"(r_) : "r"((uint32_t)(a)), "r"((uint32_t)(b))); \
        r_;                                                                                      \
    })
#define TW_PKHTB_ASR(a, b, n)                                                                      \
    __extension__({                                                                              \
        uint32_t r_;                                                                             \
        __asm__("pkhtb %0, %1, %2, asr #" #n : "=r"(r_) : "r"((uint32_t)(a)), "r"((uint32_t)(b))); \
        r_;                                                                                      \
    })

/* (x >> n) & mask in one instruction (AND with a shifted register operand, n a literal): with the
 * mask in a register, one AND per packed pair of codes; GCC would shift, then AND an immediate. */
#define TW_AND_LSR(x, mask, n)                                                             \
    __extension__({                                                                        \
        uint32_t r_;                                                                       \
        __asm__("and %0, %1, %2, lsr #" #n : "=r"(r_) : "r"(mask), "r"((uint32_t)(x)));     \
        r_;                                                                                \
    })

#include "../driver.h"   /* the group step and tw_matvec_prepared (no TW_CHUNK: no chunk sums here) */

#endif
