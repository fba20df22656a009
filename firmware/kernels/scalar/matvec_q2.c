/* matvec_q2 in portable scalar C, both schemes; bit-identical to kernels/ref/matvec_q2.c.
 *
 * Two products per multiply, exactly. A row word holds 16 codes (element k in bits 2k..2k+1), so
 * p = (w >> 2k) & 0x00030003 is the pair (c_k, c_k+8) = c_k + c_k+8 * 2^16: one shift and one AND
 * per pair, no byte loads. The activations are prepared once per call, 512 elements at a time
 * (1.1 KB of stack), as the words v = x_k+8 + x_k * 2^16, so that mod 2^32
 *     p * v = c_k * x_k+8 + (c_k * x_k + c_k+8 * x_k+8) * 2^16:
 * the high half gathers the two wanted products, the low half a stray one (it carries into the
 * high half). Over a block of 32 elements both sums stay well within int16 (|stray| <= 16 * 3 * 128,
 * |wanted| <= 32 * 3 * 128, for any int8 activations), so with the block's sum started at 2^15 its
 * top half, shifted arithmetically, is exactly the block's sum of c * xq. Two rows share each
 * activation word. The codes are unsigned (0..3), the zero point (2, or the asymmetric z) comes off
 * once per group against the group's activation sum: isum = sum c * xq - z * sum xq; the float part
 * is the reference's (tw_group_step in driver.h), groups in order from 0.0f, carried over between
 * the 512-element passes through out[r]. */
#include "scalar.h"

/* Code generation only: GCC 12 keeps the unrolled block in registers without pre-allocation
 * scheduling and reassociation and with the priority register allocator; otherwise it loads the
 * activation words first and spills them (built-in model, symmetric, matvec instructions per token:
 * 1.09 M on RV32IMC and 1.28 M on Armv6-M, with its eight low registers, instead of 0.87 M and 1.12 M). */
#pragma GCC optimize("no-schedule-insns", "no-tree-reassoc", "ira-algorithm=priority")

#define Q2_WORDS (TW_PASS_ELEMS / 2 + 2 * (TW_PASS_ELEMS / 32))   /* a word per 2 elements, then sum and xs per group */
#define Q2_M 0x00030003u

/* Groups of gs elements of x, n of them: per 16 elements the 8 words x_k+8 + x_k * 2^16 (k = 0..7),
 * each group's words followed by its activation sum and its scale xs (the bits), read back in that
 * order by rows_q2. */
TW_ALWAYS_INLINE void prepare_q2(uint32_t *v, const int8_t *x, const float *xs, uint32_t n, uint32_t gs) {
    for (uint32_t g = 0; g < n; g++) {
        int32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x += 16, v += 8) {
            for (uint32_t k = 0; k < 8; k++) {
                int32_t a = x[k], b = x[k + 8];
                v[k] = (uint32_t)b + ((uint32_t)a << 16);
                s += a + b;
            }
        }
        v = tw_put_group_tail(v, s, xs[g]);
    }
}

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2, asym: constants after
 * inlining) over the prepared words v of those groups. */
TW_ALWAYS_INLINE void rows_q2(float *out, const uint32_t *v, const tw_tensor *w, uint32_t r, uint32_t n_rows,
                              int asym, uint32_t g0, uint32_t n_groups) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 4;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 4;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    for (uint32_t g = 0; g < n_groups; g++) {
        const uint32_t *group_end = v + gs / 2;
        int32_t s0 = 0, s1 = 0;
        do { /* 32 elements: two words of each row */
            uint32_t a0 = tw_load4(p), a1 = tw_load4(p + 4), b0 = 0, b1 = 0;
            uint32_t t0 = 0x8000u, t1 = 0x8000u;   /* 2^15: the shift below rounds the stray half away */
            if (n_rows == 2) {
                b0 = tw_load4(p + stride);
                b1 = tw_load4(p + stride + 4);
            }
#pragma GCC unroll 8
            for (uint32_t k = 0; k < 8; k++) {
                uint32_t xv = v[k];
                t0 += ((a0 >> 2 * k) & Q2_M) * xv;
                if (n_rows == 2) t1 += ((b0 >> 2 * k) & Q2_M) * xv;
            }
#pragma GCC unroll 8
            for (uint32_t k = 0; k < 8; k++) {
                uint32_t xv = v[8 + k];
                t0 += ((a1 >> 2 * k) & Q2_M) * xv;
                if (n_rows == 2) t1 += ((b1 >> 2 * k) & Q2_M) * xv;
            }
            s0 += (int32_t)t0 >> 16;                /* arithmetic shift (GCC): the block's exact sum */
            if (n_rows == 2) s1 += (int32_t)t1 >> 16;
            v += 16;
            p += 8;
        } while (v != group_end);
        int32_t sum;
        float xsv;
        TW_GROUP_TAIL(v, sum, xsv);
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 2, sum, sc[0], xsv);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 2, sum, sc[ng], xsv);
        sc++;
        if (asym) zeros++;
    }
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

/* Every row of the prepared groups: two at a time, then the last one. */
TW_ALWAYS_INLINE void rows_by_two_q2(float *out, const uint32_t *v, const tw_tensor *w, int asym, uint32_t g0,
                                     uint32_t n) {
    uint32_t r = 0;
    for (; r + 2 <= w->rows; r += 2) rows_q2(out, v, w, r, 2, asym, g0, n);
    if (r < w->rows) rows_q2(out, v, w, r, 1, asym, g0, n);
}

void matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t v[Q2_WORDS];
    tw_matvec_prepared(out, xq, xs, w, v, prepare_q2, rows_by_two_q2);
}
