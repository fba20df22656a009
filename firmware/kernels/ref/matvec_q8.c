/* matvec_q8: reference kernel, both schemes (the truth twin/model/reference.py mirrors; contract in
 * kernels.h). */
#include "kernels.h"

/* out[r] = sum over groups g (sequential) of ((float)isum(r, g) * wscale) * xscale, where
 * isum(r, g) = sum over the group of (c - z) * xq (exact int32; kernels.h). */
void matvec_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs;
    for (uint32_t r = 0; r < w->rows; r++) {
        const int8_t *row = (const int8_t *)w->data + r * w->padded_cols;
        const float *sc = w->scales + r * ng;
        float acc = 0.0f;
        for (uint32_t g = 0; g < ng; g++) {
            int32_t isum = 0;
            if (w->scheme == TW_SCHEME_ASYMMETRIC) { /* unsigned codes */
                const uint8_t *urow = (const uint8_t *)row;
                int32_t z = w->zeros[r * ng + g];
                for (uint32_t j = g * gs; j < (g + 1) * gs; j++) isum += ((int32_t)urow[j] - z) * xq[j];
            } else {
                for (uint32_t j = g * gs; j < (g + 1) * gs; j++) isum += (int32_t)row[j] * xq[j];
            }
            acc = acc + ((float)isum * sc[g]) * xs[g];
        }
        out[r] = acc;
    }
}
