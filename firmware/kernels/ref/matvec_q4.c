/* matvec_q4: reference kernel, both schemes (the truth twin/model/reference.py mirrors; contract in
 * kernels.h). */
#include "kernels.h"

void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs;
    for (uint32_t r = 0; r < w->rows; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * (w->padded_cols / 2);
        const float *sc = w->scales + r * ng;
        float acc = 0.0f;
        for (uint32_t g = 0; g < ng; g++) {
            int32_t z = tw_group_zero(w, r, g), isum = 0;
            for (uint32_t j = g * gs; j < (g + 1) * gs; j += 2) {
                uint8_t b = row[j / 2];
                isum += ((int32_t)(b & 15) - z) * xq[j] + ((int32_t)(b >> 4) - z) * xq[j + 1];
            }
            acc = acc + ((float)isum * sc[g]) * xs[g];
        }
        out[r] = acc;
    }
}
