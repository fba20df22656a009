/* matvec_q3 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q3.c.
 * Eight codes per 3 bytes, spread so that (w >> 3k) & 0x00070007 is the pair (c_k, c_k+4): see
 * masked.h. */
#include "masked.h"

__attribute__((noinline)) static void matvec_q3_pairs(uint32_t *pr, const int8_t *x, const float *xs,
                                                      uint32_t n_groups, uint32_t gs) {
    tw_m_pair(pr, x, xs, n_groups, gs, 3);
}

void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_masked(out, xq, xs, w, 3, matvec_q3_pairs);
}
