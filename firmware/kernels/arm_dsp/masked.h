/* The 2-, 3- and 4-bit matvecs of the arm_dsp set (matvec_q2.c, matvec_q3.c, matvec_q4.c: both
 * schemes, bit-identical to ref), private to the set. 3-bit rows: see TW_M_SPREAD below.
 *
 * A word of a row holds n = 32 / bits codes, element k in bits k*bits .. k*bits + bits - 1, so
 * (w >> k*bits) & mask (mask 0x000F000F, 0x00030003) is the int16 pair (c_k, c_k+n/2) for
 * k < n/2: one AND with a shifted operand per pair, no unpacking. The activations are paired to
 * match once per call, TW_PASS_ELEMS at a time on the stack (driver.h): per n elements the n/2 words
 * (x_k, x_k+n/2), made by PKHBT / PKHTB and SXTB16 (plain and ROR #8) from the words x_k..x_k+3 and
 * x_k+n/2..x_k+n/2+3; each group's words are followed by its activation sum and scale
 * (TW_GROUP_TAIL). SMLAD adds two exact products at a time to the group's int32 sum of codes times
 * activations; the zero point (2^(bits-1), or the asymmetric z) comes off once per group,
 * isum = sum c * xq - z * sum xq. Three rows share every loaded activation pair, each 32-element
 * block of them one inline-asm statement (GCC 12 spilled the values around the group step when
 * written in C); the rows left over go one at a time through C. The float part is the reference's:
 * acc = acc + ((float)isum * scale) * xs, groups in order, per row. */
#ifndef TW_ARM_DSP_MASKED_H
#define TW_ARM_DSP_MASKED_H

#include "dsp.h"

/* Pair k of one row (at ADDR, loaded into w once per word): t = (w >> SHIFT) & m, S += t . xk */
#define TW_M_PAIR(S, X, SHIFT)                                                                  \
    "and    %[t], %[m], %[w], lsr #" #SHIFT "\n\t"                                               \
    "smlad  %[" S "], %[t], %[" X "], %[" S "]\n\t"
#define TW_M_PAIRS4(S, ADDR, A, B, C, D)                                                        \
    "ldr    %[w], " ADDR "\n\t"                                                                  \
    TW_M_PAIR(S, "x0", A) TW_M_PAIR(S, "x1", B) TW_M_PAIR(S, "x2", C) TW_M_PAIR(S, "x3", D)
/* Four activation pairs into x0..x3 (x advances by 16 bytes), then four pairs of three rows at
 * p + stride, p + 2 stride and p (P0: the last one's address operand, with p's advance if any).
 * "lsr #0" assembles as the plain register (no shift). */
#define TW_M_QUAD(A, B, C, D, P0)                                                               \
    "ldrd   %[x2], %[x3], [%[x], #8]\n\t"                                                        \
    "ldrd   %[x0], %[x1], [%[x]], #16\n\t"                                                       \
    TW_M_PAIRS4("s1", "[%[p], %[stride]]", A, B, C, D)                                          \
    TW_M_PAIRS4("s2", "[%[p], %[stride], lsl #1]", A, B, C, D)                                  \
    TW_M_PAIRS4("s0", P0, A, B, C, D)
/* 4 bits: one word is 8 elements, four pairs; 2 bits: 16 elements, eight pairs (two quads) */
#define TW_M_STEP4 TW_M_QUAD(0, 4, 8, 12, "[%[p]], #4")
#define TW_M_STEP2 TW_M_QUAD(0, 2, 4, 6, "[%[p]]") TW_M_QUAD(8, 10, 12, 14, "[%[p]], #4")

/* 3 bits: 16 elements are 6 bytes of a row, two 24-bit units read as unaligned words that never
 * cross the row's end: a (codes 0..7) from bytes 0..3, b (codes 8..15) as bits 8..31 of bytes 2..5.
 * SPREAD moves a unit's codes 4..7 (bits 12..23) to bits 16..27: then (w >> 3k) & 0x00070007 is
 * the pair (c_k, c_k+4) for k = 0..3, in the activations' 4-bit order. p advances 2, then 4. */
#define TW_M_SPREAD(PRE)                                                                        \
    PRE                                                                                         \
    "ubfx   %[t], %[w], #12, #12\n\t"                                                            \
    "bfi    %[w], %[t], #16, #16\n\t"
#define TW_M_UNIT3(S, ADDR, PRE)                                                                \
    "ldr    %[w], " ADDR "\n\t" TW_M_SPREAD(PRE)                                                 \
    TW_M_PAIR(S, "x0", 0) TW_M_PAIR(S, "x1", 3) TW_M_PAIR(S, "x2", 6) TW_M_PAIR(S, "x3", 9)
#define TW_M_HALF3(P0, PRE)                                                                     \
    "ldrd   %[x2], %[x3], [%[x], #8]\n\t"                                                        \
    "ldrd   %[x0], %[x1], [%[x]], #16\n\t"                                                       \
    TW_M_UNIT3("s1", "[%[p], %[stride]]", PRE) TW_M_UNIT3("s2", "[%[p], %[stride], lsl #1]", PRE) \
    TW_M_UNIT3("s0", P0, PRE)
#define TW_M_STEP3 TW_M_HALF3("[%[p]], #2", "") TW_M_HALF3("[%[p]], #4", "lsr    %[w], %[w], #8\n\t")

/* 32 elements of three rows (BLOCK: the steps that cover them): s[k] += row k's codes . x */
#define TW_M_THREE_ROWS_32(BLOCK, m_, x, p, stride, s0, s1, s2)                                \
    do {                                                                                        \
        uint32_t x0_, x1_, x2_, x3_, w_, t_;                                                    \
        __asm__(BLOCK                                                                           \
                : [x] "+r"(x), [p] "+r"(p), [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2),          \
                  [x0] "=&r"(x0_), [x1] "=&r"(x1_), [x2] "=&r"(x2_), [x3] "=&r"(x3_),             \
                  [w] "=&r"(w_), [t] "=&r"(t_)                                                  \
                : [stride] "r"(stride), [m] "r"(m_)                                             \
                : "memory");                                                                    \
    } while (0)

TW_ALWAYS_INLINE uint32_t tw_m_mask(uint32_t bits) {
    return bits == 4 ? 0x000F000Fu : bits == 3 ? 0x00070007u : 0x00030003u;
}

/* Pair k's partner is element k + tw_m_half(bits) (3 bits: as 4 bits, per 8-code unit). */
TW_ALWAYS_INLINE uint32_t tw_m_half(uint32_t bits) { return bits == 2 ? 8 : 4; }

/* A 3-bit unit w (codes at bits 3k) with codes 4..7 moved to bits 16..27 (TW_M_SPREAD) */
TW_ALWAYS_INLINE uint32_t tw_m_spread3(uint32_t w) { return (w & 0xFFFu) | ((w >> 12) & 0xFFFu) << 16; }

/* The activations of n_groups groups of gs paired into pr for codes of `bits` bits (above), each
 * group's words followed by its sum of int8 activations (USADA8 on the bytes biased by 128) and its
 * scale xs (bits). Each kernel wraps it in a function of its own (matvec_qN_pairs, not inlined:
 * inlined, it costs the rows' loop registers and spills). */

TW_ALWAYS_INLINE void tw_m_pair(uint32_t *pr, const int8_t *x, const float *xs, uint32_t n_groups,
                                uint32_t gs, uint32_t bits) {
    uint32_t half = tw_m_half(bits); /* pair k is (x_k, x_k+half) */
    for (uint32_t i = 0; i < n_groups; i++) {
        uint32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x += 2 * half) {
            for (uint32_t j = 0; j < half; j += 4, pr += 4) {
                uint32_t a = tw_load4(x + j), b = tw_load4(x + half + j);
                s = __usada8(a ^ 0x80808080u, 0, s);
                s = __usada8(b ^ 0x80808080u, 0, s);
                uint32_t lo = tw_pkhbt(a, b), hi = tw_pkhtb(a, b); /* (a0 a1 b0 b1), (a2 a3 b2 b3) */
                pr[0] = (uint32_t)tw_sxtb16(lo);
                pr[1] = (uint32_t)tw_sxtb16_ror8(lo);
                pr[2] = (uint32_t)tw_sxtb16(hi);
                pr[3] = (uint32_t)tw_sxtb16_ror8(hi);
            }
        }
        pr = tw_put_group_tail(pr, (int32_t)(s - 128u * gs), xs[i]);
    }
}

/* Groups g0 .. g0 + n_groups - 1 of three rows from r, their activations in pr (tw_m_pair). */
TW_ALWAYS_INLINE void tw_m_rows3(float *out, const uint32_t *pr, const tw_tensor *w, uint32_t r, int asym,
                                 uint32_t gs, uint32_t g0, uint32_t n_groups, uint32_t bits) {
    uint32_t ng = w->padded_cols / gs, stride = w->padded_cols / 8 * bits;
    int32_t zsym = 1 << (bits - 1);
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 8 * bits;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const uint32_t *x = pr, *x_end = pr + n_groups * (gs / 2 + 2);
    float acc0 = g0 ? out[r] : 0.0f, acc1 = g0 ? out[r + 1] : 0.0f, acc2 = g0 ? out[r + 2] : 0.0f;
    do {
        int32_t s0 = 0, s1 = 0, s2 = 0, sum;
        float xsv;
        for (uint32_t k = gs / 32; k; k--) {
            if (bits == 4)
                TW_M_THREE_ROWS_32(TW_M_STEP4 TW_M_STEP4 TW_M_STEP4 TW_M_STEP4, tw_m_mask(4), x, p, stride, s0, s1, s2);
            else if (bits == 3)
                TW_M_THREE_ROWS_32(TW_M_STEP3 TW_M_STEP3, tw_m_mask(3), x, p, stride, s0, s1, s2);
            else
                TW_M_THREE_ROWS_32(TW_M_STEP2 TW_M_STEP2, tw_m_mask(2), x, p, stride, s0, s1, s2);
        }
        TW_GROUP_TAIL(x, sum, xsv);
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : zsym, sum, sc[0], xsv);
        acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : zsym, sum, sc[ng], xsv);
        acc2 = tw_group_step(acc2, s2, asym ? zeros[2 * ng] : zsym, sum, sc[2 * ng], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    out[r + 1] = acc1;
    out[r + 2] = acc2;
}

/* One row r's groups g0 .. g0 + n_groups - 1 in C (the rows left over by three). */
TW_ALWAYS_INLINE void tw_m_row1(float *out, const uint32_t *pr, const tw_tensor *w, uint32_t r, int asym,
                                uint32_t g0, uint32_t n_groups, uint32_t bits) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 8 * bits;
    uint32_t m = tw_m_mask(bits), half = tw_m_half(bits);
    int32_t zsym = 1 << (bits - 1);
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 8 * bits;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const uint32_t *x = pr, *x_end = pr + n_groups * (gs / 2 + 2);
    float acc = g0 ? out[r] : 0.0f;
    do {
        const uint32_t *group_end = x + gs / 2;
        int32_t s0 = 0, sum;
        float xsv;
        if (bits == 3) {
            do { /* 16 codes: two units (TW_M_SPREAD), four pairs each */
                uint32_t a = tw_m_spread3(tw_load4_unaligned(p)), b = tw_m_spread3(tw_load4_unaligned(p + 2) >> 8);
#pragma GCC unroll 4
                for (uint32_t k = 0; k < 4; k++) {
                    s0 = __smlad((int32_t)((a >> (3 * k)) & m), (int32_t)x[k], s0);
                    s0 = __smlad((int32_t)((b >> (3 * k)) & m), (int32_t)x[4 + k], s0);
                }
                x += 8;
                p += 6;
            } while (x != group_end);
        } else {
            do { /* one word of codes: half pairs */
                uint32_t wv = tw_load4(p);
#pragma GCC unroll 8
                for (uint32_t k = 0; k < half; k++)
                    s0 = __smlad((int32_t)((wv >> (k * bits)) & m), (int32_t)x[k], s0);
                x += half;
                p += 4;
            } while (x != group_end);
        }
        TW_GROUP_TAIL(x, sum, xsv);
        acc = tw_group_step(acc, s0, asym ? zeros[0] : zsym, sum, sc[0], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc;
}

/* Every row over one chunk of groups (asym and bits: constants after inlining; the common group
 * size 32 as a constant too, so that no loop or counter is left around its block). */
TW_ALWAYS_INLINE void tw_m_chunk(float *out, const uint32_t *pr, const tw_tensor *w, int asym, uint32_t g0,
                                 uint32_t n_groups, uint32_t bits) {
    uint32_t r = 0, gs = w->group_size;
    if (gs == 32)
        for (; r + 3 <= w->rows; r += 3) tw_m_rows3(out, pr, w, r, asym, 32, g0, n_groups, bits);
    else
        for (; r + 3 <= w->rows; r += 3) tw_m_rows3(out, pr, w, r, asym, gs, g0, n_groups, bits);
    for (; r < w->rows; r++) tw_m_row1(out, pr, w, r, asym, g0, n_groups, bits);
}

/* The words a pass of prepared activations takes (two bytes per element, two words per group). */
#define TW_M_WORDS (TW_PASS_ELEMS / 2 + 2 * TW_PASS_ELEMS / 32)

#endif
