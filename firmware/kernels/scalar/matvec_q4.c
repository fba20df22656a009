/* matvec_q4 in portable scalar C, both schemes; bit-identical to kernels/ref/matvec_q4.c.
 *
 * A row word holds 8 codes (element k in bits 4k..4k+3): one load, then a shift and a mask per
 * code, no byte loads; two rows share each activation byte. The codes are unsigned (0..15), the
 * zero point (8, or the asymmetric z) comes off once per group: isum = sum c * xq - z * sum xq. */
#include "scalar.h"

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
            uint32_t w0 = tw_load4(p), w1 = n_rows == 2 ? tw_load4(p + stride) : 0;
#pragma GCC unroll 8
            for (uint32_t k = 0; k < 8; k++) {
                int32_t xv = x[k];
                s0 += (int32_t)((w0 >> 4 * k) & 15u) * xv;
                if (n_rows == 2) s1 += (int32_t)((w1 >> 4 * k) & 15u) * xv;
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
