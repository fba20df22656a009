/* matvec_q3: reference kernel, both schemes (the truth twin/model/reference.py mirrors; contract in
 * kernels.h). */
#include "kernels.h"

/* 3 bits: 8 codes in 3 bytes (a 24-bit little-endian word, element k at bits 3k..3k+2). */
void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs;
    for (uint32_t r = 0; r < w->rows; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * (w->padded_cols / 8 * 3);
        const float *sc = w->scales + r * ng;
        float acc = 0.0f;
        for (uint32_t g = 0; g < ng; g++) {
            int32_t z = tw_group_zero(w, r, g), isum = 0;
            for (uint32_t j = g * gs; j < (g + 1) * gs; j += 8) {
                const uint8_t *p = row + j / 8 * 3;
                uint32_t b = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
                for (uint32_t k = 0; k < 8; k++, b >>= 3) isum += ((int32_t)(b & 7u) - z) * xq[j + k];
            }
            acc = acc + ((float)isum * sc[g]) * xs[g];
        }
        out[r] = acc;
    }
}
