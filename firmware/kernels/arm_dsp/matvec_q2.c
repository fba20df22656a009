/* matvec_q2 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q2.c.
 *
 * One word of a row holds 16 codes, element k in bits 2k..2k+1, so (w >> 2k) & 0x00030003 is the
 * int16 pair (c_k, c_k+8) for k = 0..7: one AND (with a shifted operand) per pair. The activations
 * are paired to match on the fly: PKHBT / PKHTB of the words x0..x3 and x8..x11 give the bytes
 * (x0 x1 x8 x9) and (x2 x3 x10 x11), SXTB16 (plain and ROR #8) the pairs (x0, x8) ... (x3, x11);
 * the same for x4..x7 and x12..x15. SMLAD adds two exact products at a time; the zero point (2, or
 * the asymmetric z) comes off once per group, isum = sum c * xq - z * sum xq, with the groups' sums
 * of xq computed once per call (TW_CHUNK in dsp.h). Two rows share each unpacked activation pair.
 * The float part is the reference's: acc = acc + ((float)isum * scale) * xs, groups in order. */
#include "dsp.h"
#include "kernels.h"

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2, asym: constants after
 * inlining); sums[i] is the activation sum of group g0 + i. */
TW_ALWAYS_INLINE void rows_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 4;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 4;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    do {
        const int8_t *group_end = x + gs;
        int32_t s0 = 0, s1 = 0;
        do { /* gs is a multiple of 32: 16 elements per turn, in two halves of 8 */
            uint32_t m = 0x00030003u; /* (c_k, c_k+8) = (w >> 2k) & m */
            uint32_t w0 = tw_load4(p), w1 = n_rows == 2 ? tw_load4(p + stride) : 0;
            uint32_t x0 = tw_load4(x), x8 = tw_load4(x + 8);    /* x0..x3, x8..x11 */
            uint32_t lo = tw_pkhbt(x0, x8), hi = tw_pkhtb(x0, x8);
            int32_t xa = tw_sxtb16(lo), xb = tw_sxtb16_ror8(lo); /* (x0, x8), (x1, x9) */
            int32_t xc = tw_sxtb16(hi), xd = tw_sxtb16_ror8(hi); /* (x2, x10), (x3, x11) */
            s0 = __smlad((int32_t)(w0 & m), xa, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 2), xb, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 4), xc, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 6), xd, s0);
            if (n_rows == 2) {
                s1 = __smlad((int32_t)(w1 & m), xa, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 2), xb, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 4), xc, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 6), xd, s1);
            }
            x0 = tw_load4(x + 4);                                /* x4..x7, x12..x15 */
            x8 = tw_load4(x + 12);
            lo = tw_pkhbt(x0, x8);
            hi = tw_pkhtb(x0, x8);
            xa = tw_sxtb16(lo);                                   /* (x4, x12) ... (x7, x15) */
            xb = tw_sxtb16_ror8(lo);
            xc = tw_sxtb16(hi);
            xd = tw_sxtb16_ror8(hi);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 8), xa, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 10), xb, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 12), xc, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 14), xd, s0);
            if (n_rows == 2) {
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 8), xa, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 10), xb, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 12), xc, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(w1, m, 14), xd, s1);
            }
            x += 16;
            p += 4;
        } while (x != group_end);
        int32_t sum = *sums++;
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 2, sum, sc[0], *xsg);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 2, sum, sc[ng], *xsg);
        xsg++;
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q2, 1);
}
