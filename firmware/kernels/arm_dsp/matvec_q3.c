/* matvec_q3 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q3.c.
 *
 * A row is a little-endian bit stream of 3-bit codes (8 per 3 bytes). Two 24-bit units, a (codes
 * 0..7) and b (codes 8..15), read as unaligned words, are packed side by side with PKHBT: the
 * half-words (a.lo, b.lo) hold codes 0..4 of each, so (t >> 3k) & 0x00070007 is the int16 pair
 * (c_k, c_k+8) for k = 0..4, and (a >> 12, b >> 12) packed with PKHTB gives k = 5..7. The
 * activations are paired to match as in matvec_q2.c: (x0, x8) ... (x7, x15) from PKHBT / PKHTB
 * and SXTB16. SMLAD adds two exact products at a time; the zero point (4, or the asymmetric z)
 * comes off once per group, isum = sum c * xq - z * sum xq, with the groups' sums of xq computed
 * once per call (TW_CHUNK in dsp.h). Two rows share each unpacked activation pair. The float part
 * is the reference's: acc = acc + ((float)isum * scale) * xs, groups in order. */
#include "dsp.h"
#include "kernels.h"

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2, asym: constants after
 * inlining); sums[i] is the activation sum of group g0 + i. */
TW_ALWAYS_INLINE void rows_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 8 * 3;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 8 * 3;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    do {
        const int8_t *group_end = x + gs;
        int32_t s0 = 0, s1 = 0;
        do { /* gs is a multiple of 32: 16 elements (6 bytes of a row) per turn, in two halves */
            uint32_t m = 0x00070007u;
            /* 24-bit units a (codes 0..7) and b (8..15), bits 3k..3k+2, read without crossing the
             * row's end: a from bytes 0..3 (byte 3, b's, is never picked), b as bits 8..31 of bytes
             * 2..5. t = (a.lo, b.lo): (t >> 3k) & m = (c_k, c_k+8) for k = 0..4; u = ((a >> 12).lo,
             * (b >> 12).lo): (u >> 3k - 12) & m for k = 5..7. */
            uint32_t a0 = tw_load4_unaligned(p), b0 = tw_load4_unaligned(p + 2);
            uint32_t t0 = TW_PKHBT_LSL(a0, b0, 8), u0 = TW_PKHTB_ASR(b0 >> 4, a0, 12);
            uint32_t t1 = 0, u1 = 0;
            if (n_rows == 2) {
                uint32_t a1 = tw_load4_unaligned(p + stride), b1 = tw_load4_unaligned(p + stride + 2);
                t1 = TW_PKHBT_LSL(a1, b1, 8);
                u1 = TW_PKHTB_ASR(b1 >> 4, a1, 12);
            }
            uint32_t x0 = tw_load4(x), x8 = tw_load4(x + 8);    /* x0..x3, x8..x11 */
            uint32_t lo = tw_pkhbt(x0, x8), hi = tw_pkhtb(x0, x8);
            int32_t xa = tw_sxtb16(lo), xb = tw_sxtb16_ror8(lo); /* (x0, x8), (x1, x9) */
            int32_t xc = tw_sxtb16(hi), xd = tw_sxtb16_ror8(hi); /* (x2, x10), (x3, x11) */
            s0 = __smlad((int32_t)(t0 & m), xa, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(t0, m, 3), xb, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(t0, m, 6), xc, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(t0, m, 9), xd, s0);
            if (n_rows == 2) {
                s1 = __smlad((int32_t)(t1 & m), xa, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(t1, m, 3), xb, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(t1, m, 6), xc, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(t1, m, 9), xd, s1);
            }
            x0 = tw_load4(x + 4);                                /* x4..x7, x12..x15 */
            x8 = tw_load4(x + 12);
            lo = tw_pkhbt(x0, x8);
            hi = tw_pkhtb(x0, x8);
            xa = tw_sxtb16(lo);                                   /* (x4, x12) ... (x7, x15) */
            xb = tw_sxtb16_ror8(lo);
            xc = tw_sxtb16(hi);
            xd = tw_sxtb16_ror8(hi);
            s0 = __smlad((int32_t)TW_AND_LSR(t0, m, 12), xa, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(u0, m, 3), xb, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(u0, m, 6), xc, s0);
            s0 = __smlad((int32_t)TW_AND_LSR(u0, m, 9), xd, s0);
            if (n_rows == 2) {
                s1 = __smlad((int32_t)TW_AND_LSR(t1, m, 12), xa, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(u1, m, 3), xb, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(u1, m, 6), xc, s1);
                s1 = __smlad((int32_t)TW_AND_LSR(u1, m, 9), xd, s1);
            }
            x += 16;
            p += 6;
        } while (x != group_end);
        int32_t sum = *sums++;
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 4, sum, sc[0], *xsg);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 4, sum, sc[ng], *xsg);
        xsg++;
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q3, 1);
}
