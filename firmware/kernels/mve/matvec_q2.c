/* matvec_q2 with Helium (MVE), both schemes; bit-identical to kernels/ref/matvec_q2.c.
 *
 * 64 elements per turn: one vector load of 16 packed bytes holds elements 4i+k at bits 2k..2k+1 of
 * byte i; VAND/VSHR give the four code vectors k = 0..3 (codes 0..3), the de-interleaving load VLD4
 * gives the matching activation vectors (element 4i+k in vector k), and four VMLADAVA.S8 add the 64
 * products to the group's int32 sum; two rows share the activation vectors. Groups of 32 are taken
 * two at a time: lanes 0-7 of every vector belong to the first, lanes 8-15 to the second, and
 * predicated VMLADAVA (VPST) keep the two sums apart; a last odd group of 32 is done in scalar code.
 * The zero point comes off once per group: isum = sum c * xq - z * sum xq (mve.h). */
#include "mve.h"

#define TW_LANES_LO ((mve_pred16_t)0x00FFu)   /* byte lanes 0-7 */
#define TW_LANES_HI ((mve_pred16_t)0xFF00u)   /* byte lanes 8-15 */

/* The four code vectors of 16 packed bytes at p (elements 4i+k in vector k). */
#define TW_CODES(p)                                                                          \
    uint8x16_t b_ = vldrbq_u8(p);                                                            \
    int8x16_t c0_ = vreinterpretq_s8_u8(vandq_u8(b_, three));                                \
    int8x16_t c1_ = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(b_, 2), three));                 \
    int8x16_t c2_ = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(b_, 4), three));                 \
    int8x16_t c3_ = vreinterpretq_s8_u8(vshrq_n_u8(b_, 6))

/* Scalar sum of codes * activations of one group of gs elements (the reference's loop, z hoisted). */
TW_ALWAYS_INLINE int32_t dot_scalar(const uint8_t *p, const int8_t *x, uint32_t gs) {
    int32_t s = 0;
    for (uint32_t j = 0; j < gs; j += 4) {
        uint32_t b = p[j / 4];
        s += (int32_t)(b & 3u) * x[j] + (int32_t)((b >> 2) & 3u) * x[j + 1] + (int32_t)((b >> 4) & 3u) * x[j + 2] +
             (int32_t)(b >> 6) * x[j + 3];
    }
    return s;
}

TW_ALWAYS_INLINE void rows_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 4;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 4;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs;
    const float *xsg = xs + g0;
    const uint8x16_t three = vdupq_n_u8(3);
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    uint32_t g = 0;
    if (gs == 32) {     /* two groups per turn */
        for (; g + 2 <= n_groups; g += 2) {
            int8x16x4_t xv = vld4q_s8(x);
            int32_t a0 = 0, h0 = 0, a1 = 0, h1 = 0;
            {
                TW_CODES(p);
                a0 = vmladavaq_p_s8(a0, c0_, xv.val[0], TW_LANES_LO);
                a0 = vmladavaq_p_s8(a0, c1_, xv.val[1], TW_LANES_LO);
                a0 = vmladavaq_p_s8(a0, c2_, xv.val[2], TW_LANES_LO);
                a0 = vmladavaq_p_s8(a0, c3_, xv.val[3], TW_LANES_LO);
                h0 = vmladavaq_p_s8(h0, c0_, xv.val[0], TW_LANES_HI);
                h0 = vmladavaq_p_s8(h0, c1_, xv.val[1], TW_LANES_HI);
                h0 = vmladavaq_p_s8(h0, c2_, xv.val[2], TW_LANES_HI);
                h0 = vmladavaq_p_s8(h0, c3_, xv.val[3], TW_LANES_HI);
            }
            if (n_rows == 2) {
                TW_CODES(p + stride);
                a1 = vmladavaq_p_s8(a1, c0_, xv.val[0], TW_LANES_LO);
                a1 = vmladavaq_p_s8(a1, c1_, xv.val[1], TW_LANES_LO);
                a1 = vmladavaq_p_s8(a1, c2_, xv.val[2], TW_LANES_LO);
                a1 = vmladavaq_p_s8(a1, c3_, xv.val[3], TW_LANES_LO);
                h1 = vmladavaq_p_s8(h1, c0_, xv.val[0], TW_LANES_HI);
                h1 = vmladavaq_p_s8(h1, c1_, xv.val[1], TW_LANES_HI);
                h1 = vmladavaq_p_s8(h1, c2_, xv.val[2], TW_LANES_HI);
                h1 = vmladavaq_p_s8(h1, c3_, xv.val[3], TW_LANES_HI);
            }
            acc0 = tw_group_step(acc0, a0, asym ? zeros[g] : 2, sums[g], sc[g], xsg[g]);
            acc0 = tw_group_step(acc0, h0, asym ? zeros[g + 1] : 2, sums[g + 1], sc[g + 1], xsg[g + 1]);
            if (n_rows == 2) {
                acc1 = tw_group_step(acc1, a1, asym ? zeros[ng + g] : 2, sums[g], sc[ng + g], xsg[g]);
                acc1 = tw_group_step(acc1, h1, asym ? zeros[ng + g + 1] : 2, sums[g + 1], sc[ng + g + 1],
                                     xsg[g + 1]);
            }
            x += 64;
            p += 16;
        }
        if (g < n_groups) {   /* a last odd group of 32 */
            acc0 = tw_group_step(acc0, dot_scalar(p, x, 32), asym ? zeros[g] : 2, sums[g], sc[g], xsg[g]);
            if (n_rows == 2)
                acc1 = tw_group_step(acc1, dot_scalar(p + stride, x, 32), asym ? zeros[ng + g] : 2, sums[g],
                                     sc[ng + g], xsg[g]);
        }
    } else {            /* gs a multiple of 64 */
        for (; g < n_groups; g++) {
            int32_t s0 = 0, s1 = 0;
            for (uint32_t j = 0; j < gs; j += 64) {
                int8x16x4_t xv = vld4q_s8(x + j);
                {
                    TW_CODES(p + j / 4);
                    s0 = vmladavaq_s8(s0, c0_, xv.val[0]);
                    s0 = vmladavaq_s8(s0, c1_, xv.val[1]);
                    s0 = vmladavaq_s8(s0, c2_, xv.val[2]);
                    s0 = vmladavaq_s8(s0, c3_, xv.val[3]);
                }
                if (n_rows == 2) {
                    TW_CODES(p + stride + j / 4);
                    s1 = vmladavaq_s8(s1, c0_, xv.val[0]);
                    s1 = vmladavaq_s8(s1, c1_, xv.val[1]);
                    s1 = vmladavaq_s8(s1, c2_, xv.val[2]);
                    s1 = vmladavaq_s8(s1, c3_, xv.val[3]);
                }
            }
            acc0 = tw_group_step(acc0, s0, asym ? zeros[g] : 2, sums[g], sc[g], xsg[g]);
            if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng + g] : 2, sums[g], sc[ng + g], xsg[g]);
            x += gs;
            p += gs / 4;
        }
    }
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q2, 1);
}
