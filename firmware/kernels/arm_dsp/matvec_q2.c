/* matvec_q2 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q2.c.
 * Sixteen codes per word, pairs (c_k, c_k+8) = (w >> 2k) & 0x00030003: see masked.h. */
#include "masked.h"

__attribute__((noinline)) static void matvec_q2_pairs(uint32_t *pr, const int8_t *x, const float *xs,
                                                      uint32_t n_groups, uint32_t gs) {
    tw_m_pair(pr, x, xs, n_groups, gs, 2);
}

void matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_masked(out, xq, xs, w, 2, matvec_q2_pairs);
}
