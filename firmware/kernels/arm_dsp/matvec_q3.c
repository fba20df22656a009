/* matvec_q3 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q3.c.
 * Eight codes per 3 bytes, spread so that (w >> 3k) & 0x00070007 is the pair (c_k, c_k+4): see
 * masked.h. */
#include "masked.h"

__attribute__((noinline)) static void matvec_q3_pairs(uint32_t *pr, const int8_t *x, const float *xs,
                                                      uint32_t n_groups, uint32_t gs) {
    tw_m_pair(pr, x, xs, n_groups, gs, 3);
}

TW_ALWAYS_INLINE void pass_q3(float *out, const uint32_t *v, const tw_tensor *w, int asym, uint32_t g0,
                            uint32_t n_groups) {
    tw_m_chunk(out, v, w, asym, g0, n_groups, 3);
}

void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t v[TW_M_WORDS];
    tw_matvec_prepared(out, xq, xs, w, v, matvec_q3_pairs, pass_q3);
}
