/* matvec_q4 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q4.c.
 *
 * One word of a row holds 8 codes, element k in bits 4k..4k+3, so (w >> 4k) & 0x000F000F is the
 * int16 pair (c_k, c_k+4) for k = 0..3: one AND (with a shifted operand) per pair, no unpacking.
 * The activations are paired to match on the fly, without a buffer: PKHBT / PKHTB gather the
 * bytes (x0 x1 x4 x5) and (x2 x3 x6 x7) of two activation words, SXTB16 (plain and ROR #8) makes
 * (x0, x4), (x1, x5), (x2, x6), (x3, x7). SMLAD adds two products at a time to the exact int32
 * sum of codes times activations; the zero point (8, or the asymmetric z) comes off once per
 * group, isum = sum c * xq - z * sum xq, with the groups' sums of xq computed once per call
 * (TW_CHUNK in dsp.h). Two rows share each unpacked activation pair. The float part is the
 * reference's: acc = acc + ((float)isum * scale) * xs, groups in order, per row. */
#include "dsp.h"
#include "kernels.h"

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2, asym: constants after
 * inlining); sums[i] is the activation sum of group g0 + i. */
TW_ALWAYS_INLINE void rows_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    do {
        const int8_t *group_end = x + gs;
        int32_t s0 = 0, s1 = 0;
        do { /* gs is a multiple of 32: 8 elements per turn */
            uint32_t m = 0x000F000Fu; /* (c_k, c_k+4) = (w >> 4k) & m */
            uint32_t x0 = tw_load4(x), x1 = tw_load4(x + 4);
            uint32_t lo = tw_pkhbt(x0, x1), hi = tw_pkhtb(x0, x1);
            int32_t x04 = tw_sxtb16(lo), x15 = tw_sxtb16_ror8(lo);
            int32_t x26 = tw_sxtb16(hi), x37 = tw_sxtb16_ror8(hi);
            uint32_t w0 = tw_load4(p);
            s0 = __smlad((int32_t)(w0 & m), x04, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 4), x15, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 8), x26, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 12), x37, s0);
            if (n_rows == 2) {
                uint32_t w1 = tw_load4(p + stride);
                s1 = __smlad((int32_t)(w1 & m), x04, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 4), x15, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 8), x26, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 12), x37, s1);
            }
            x += 8;
            p += 4;
        } while (x != group_end);
        int32_t sum = *sums++;
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 8, sum, sc[0], *xsg);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 8, sum, sc[ng], *xsg);
        xsg++;
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q4, 1);
}
