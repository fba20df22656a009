/* matvec_q4 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q4.c.
 *
 * One word of a row holds 8 codes, element k in bits 4k..4k+3, so (w >> 4k) & 0x000F000F is the
 * int16 pair (c_k, c_k+4) for k = 0..3: one AND (with a shifted operand) per pair, no unpacking.
 * The activations are paired to match on the fly, without a buffer: PKHBT / PKHTB gather the
 * bytes (x0 x1 x4 x5) and (x2 x3 x6 x7) of two activation words, SXTB16 (plain and ROR #8) makes
 * (x0, x4), (x1, x5), (x2, x6), (x3, x7). SMLAD adds two products at a time to the exact int32
 * sum of codes times activations; the zero point (8, or the asymmetric z) comes off once per
 * group, isum = sum c * xq - z * sum xq, with the groups' sums of xq computed once per call
 * (TW_CHUNK in dsp.h). Three rows share each unpacked activation pair. The float part is the
 * reference's: acc = acc + ((float)isum * scale) * xs, groups in order, per row. */
#include "dsp.h"
#include "kernels.h"

/* One 8-element step of three rows (at p, p + stride, p + 2 stride), in registers throughout: the
 * activation words paired as above into (x0, x4), (x1, x5), (x2, x6), (x3, x7), then each row's word
 * loaded, its four code pairs masked out and multiplied in (SMLAD); x and p advance. */
#define Q4_ROW(S, ADDR)                                                                          \
    "ldr    %[w], " ADDR "\n\t"                                                                  \
    "and    %[t], %[w], %[m]\n\t"                                                                \
    "smlad  %[" S "], %[t], %[x04], %[" S "]\n\t"                                                 \
    "and    %[t], %[m], %[w], lsr #4\n\t"                                                        \
    "smlad  %[" S "], %[t], %[x15], %[" S "]\n\t"                                                 \
    "and    %[t], %[m], %[w], lsr #8\n\t"                                                        \
    "smlad  %[" S "], %[t], %[x26], %[" S "]\n\t"                                                 \
    "and    %[t], %[m], %[w], lsr #12\n\t"                                                       \
    "smlad  %[" S "], %[t], %[x37], %[" S "]\n\t"
#define Q4_STEP                                                                                  \
    "ldrd   %[x04], %[x37], [%[x]], #8\n\t" /* (x0 x1 x2 x3), (x4 x5 x6 x7) */                     \
    "pkhbt  %[x15], %[x04], %[x37], lsl #16\n\t" /* (x0 x1 x4 x5) */                              \
    "pkhtb  %[x37], %[x37], %[x04], asr #16\n\t" /* (x2 x3 x6 x7) */                              \
    "sxtb16 %[x04], %[x15]\n\t"                                                                  \
    "sxtb16 %[x15], %[x15], ror #8\n\t"                                                          \
    "sxtb16 %[x26], %[x37]\n\t"                                                                  \
    "sxtb16 %[x37], %[x37], ror #8\n\t"                                                          \
    Q4_ROW("s1", "[%[p], %[stride]]") Q4_ROW("s2", "[%[p], %[stride], lsl #1]")                  \
    Q4_ROW("s0", "[%[p]], #4")

/* 32 elements of three rows: s[k] += row k's codes . x */
#define Q4_THREE_ROWS_32(x, p, stride, s0, s1, s2)                                            \
    do {                                                                                        \
        uint32_t x04, x15, x26, x37, w_, t_;                                                    \
        __asm__(Q4_STEP Q4_STEP Q4_STEP Q4_STEP                                                 \
                : [x] "+r"(x), [p] "+r"(p), [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2),          \
                  [x04] "=&r"(x04), [x15] "=&r"(x15), [x26] "=&r"(x26), [x37] "=&r"(x37),         \
                  [w] "=&r"(w_), [t] "=&r"(t_)                                                  \
                : [stride] "r"(stride), [m] "r"(0x000F000Fu)                                    \
                : "memory");                                                                    \
    } while (0)

/* Groups g0 .. g0 + n_groups - 1 of three rows from r (the common case: see rows_q4). */
TW_ALWAYS_INLINE void rows3_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                               int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = g0 ? out[r + 1] : 0.0f, acc2 = g0 ? out[r + 2] : 0.0f;
    do {
        int32_t s0 = 0, s1 = 0, s2 = 0;
        if (gs == 32) /* the common group: no loop around the block (its counter would spill) */
            Q4_THREE_ROWS_32(x, p, stride, s0, s1, s2);
        else
            for (uint32_t k = gs / 32; k; k--) Q4_THREE_ROWS_32(x, p, stride, s0, s1, s2);
        int32_t sum = *sums++;
        float xsv = *xsg++;
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 8, sum, sc[0], xsv);
        acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 8, sum, sc[ng], xsv);
        acc2 = tw_group_step(acc2, s2, asym ? zeros[2 * ng] : 8, sum, sc[2 * ng], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    out[r + 1] = acc1;
    out[r + 2] = acc2;
}

/* One row r's groups g0 .. g0 + n_groups - 1 in C (the rows left over by three). */
TW_ALWAYS_INLINE void row1_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc = g0 ? out[r] : 0.0f;
    do {
        const int8_t *group_end = x + gs;
        int32_t s0 = 0;
        do { /* gs is a multiple of 32: 8 elements per turn */
            uint32_t m = 0x000F000Fu; /* (c_k, c_k+4) = (w >> 4k) & m */
            uint32_t x0 = tw_load4(x), x1 = tw_load4(x + 4);
            uint32_t lo = tw_pkhbt(x0, x1), hi = tw_pkhtb(x0, x1);
            uint32_t w0 = tw_load4(p);
            s0 = __smlad((int32_t)(w0 & m), tw_sxtb16(lo), s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 4), tw_sxtb16_ror8(lo), s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 8), tw_sxtb16(hi), s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 12), tw_sxtb16_ror8(hi), s0);
            x += 8;
            p += 4;
        } while (x != group_end);
        acc = tw_group_step(acc, s0, asym ? zeros[0] : 8, *sums++, sc[0], *xsg);
        xsg++;
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc;
}

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 3, or 1-2 left over; asym: a
 * constant after inlining); sums[i] is the activation sum of group g0 + i. */
TW_ALWAYS_INLINE void rows_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    if (n_rows == 3) {
        rows3_q4(out, xq, xs, w, r, asym, g0, n_groups, sums);
        return;
    }
    for (uint32_t k = 0; k < n_rows; k++) row1_q4(out, xq, xs, w, r + k, asym, g0, n_groups, sums);
}

void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_rows(out, xq, xs, w, rows_q4, 1, 3);
}
