/* matvec_q2: reference kernel, both schemes (the truth twin/model/reference.py mirrors; contract in
 * kernels.h). */
#include "kernels.h"

/* 2 bits: 4 codes per byte, element k of the byte at bits 2k..2k+1. */
void matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs;
    for (uint32_t r = 0; r < w->rows; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * (w->padded_cols / 4);
        const float *sc = w->scales + r * ng;
        float acc = 0.0f;
        for (uint32_t g = 0; g < ng; g++) {
            int32_t z = tw_group_zero(w, r, g), isum = 0;
            for (uint32_t j = g * gs; j < (g + 1) * gs; j += 4) {
                uint32_t b = row[j / 4];
                isum += ((int32_t)(b & 3u) - z) * xq[j] + ((int32_t)((b >> 2) & 3u) - z) * xq[j + 1] +
                        ((int32_t)((b >> 4) & 3u) - z) * xq[j + 2] + ((int32_t)(b >> 6) - z) * xq[j + 3];
            }
            acc = acc + ((float)isum * sc[g]) * xs[g];
        }
        out[r] = acc;
    }
}
