/* matvec_q8 with Helium (MVE), both schemes; bit-identical to kernels/ref/matvec_q8.c.
 *
 * Sixteen codes and sixteen activations per vector load, one VMLADAVA.S8 adds their sixteen products
 * to the group's int32 sum; two rows share each activation vector. Asymmetric codes are unsigned
 * (0..255): flipping the top bit makes them signed c - 128, so isum = sum (c - 128) * xq
 * - (z - 128) * sum xq, exact (mve.h). */
#include "mve.h"

TW_ALWAYS_INLINE void rows_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols;
    const int8_t *p = (const int8_t *)w->data + r * stride + g0 * gs;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    for (uint32_t g = 0; g < n_groups; g++) {
        int32_t s0 = 0, s1 = 0;
        for (uint32_t j = 0; j < gs; j += 16) {
            int8x16_t xv = vldrbq_s8(x + j);
            int8x16_t c0 = vldrbq_s8(p + j);
            if (asym) c0 = veorq_s8(c0, vdupq_n_s8(-128));
            s0 = vmladavaq_s8(s0, c0, xv);
            if (n_rows == 2) {
                int8x16_t c1 = vldrbq_s8(p + stride + j);
                if (asym) c1 = veorq_s8(c1, vdupq_n_s8(-128));
                s1 = vmladavaq_s8(s1, c1, xv);
            }
        }
        int32_t sum = asym ? sums[g] : 0;      /* symmetric 8-bit codes are signed: no zero point */
        acc0 = tw_group_step(acc0, s0, asym ? (int32_t)zeros[g] - 128 : 0, sum, sc[g], xsg[g]);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? (int32_t)zeros[ng + g] - 128 : 0, sum, sc[ng + g], xsg[g]);
        x += gs;
        p += gs;
    }
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q8, 0);
}
