/* matvec_q4 with Helium (MVE), both schemes; bit-identical to kernels/ref/matvec_q4.c.
 *
 * 32 elements per turn: one vector load of 16 packed bytes gives the even elements (low nibbles,
 * VAND) and the odd ones (high nibbles, VSHR), the de-interleaving load VLD2 gives the matching
 * even and odd activations, and two VMLADAVA.S8 add the 32 products (codes 0..15) to the group's
 * int32 sum; two rows share the activation vectors. The zero point comes off once per group:
 * isum = sum c * xq - z * sum xq (mve.h). */
#include "mve.h"

TW_ALWAYS_INLINE void rows_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs;
    const float *xsg = xs + g0;
    const uint8x16_t low = vdupq_n_u8(15);
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    for (uint32_t g = 0; g < n_groups; g++) {
        int32_t s0 = 0, s1 = 0;
        for (uint32_t j = 0; j < gs; j += 32) {   /* gs is a multiple of 32 */
            int8x16x2_t xv = vld2q_s8(x + j);
            uint8x16_t b0 = vldrbq_u8(p + j / 2);
            s0 = vmladavaq_s8(s0, vreinterpretq_s8_u8(vandq_u8(b0, low)), xv.val[0]);
            s0 = vmladavaq_s8(s0, vreinterpretq_s8_u8(vshrq_n_u8(b0, 4)), xv.val[1]);
            if (n_rows == 2) {
                uint8x16_t b1 = vldrbq_u8(p + stride + j / 2);
                s1 = vmladavaq_s8(s1, vreinterpretq_s8_u8(vandq_u8(b1, low)), xv.val[0]);
                s1 = vmladavaq_s8(s1, vreinterpretq_s8_u8(vshrq_n_u8(b1, 4)), xv.val[1]);
            }
        }
        acc0 = tw_group_step(acc0, s0, asym ? zeros[g] : 8, sums[g], sc[g], xsg[g]);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng + g] : 8, sums[g], sc[ng + g], xsg[g]);
        x += gs;
        p += gs / 2;
    }
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q4, 1);
}
