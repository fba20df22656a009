/* matvec_q3 in portable scalar C, both schemes; bit-identical to kernels/ref/matvec_q3.c.
 *
 * Two products per multiply, exactly, as in matvec_q2.c: a code pair p = c_a + c_b * 2^16 times the
 * prepared activation word v = x_b + x_a * 2^16 is, mod 2^32, c_a * x_b + (c_a * x_a + c_b * x_b) * 2^16.
 * Over a block of 32 elements the wanted half stays within int16 (|.| <= 32 * 7 * 128 = 28,672) and so
 * does the stray one (<= 14 * 7 * 128 + 1,792 for the four bit fields below = 14,336), for any int8
 * activations, so with the block's sum started at 2^15 its top half, shifted arithmetically, is
 * exactly the block's sum of c * xq.
 *
 * A row's 32 elements are 12 bytes: three words W0 W1 W2, aligned (rows are whole words, kernels.h),
 * element k at bits 3k..3k+2 of their 96-bit little-endian stream; nothing past them is read. Two
 * half-words 48 stream bits apart hold codes j and j + 16 at the same bits, so three words made of
 * whole half-words (read as such: no shifts by 3) give the pairs (c_j, c_j+16), one shift and one AND
 * each:
 *   C1 = W0.lo | W1.hi << 16   (C1 >> 3k)     & 0x00070007 = (c_k,    c_16+k)   k = 0..4
 *   C3 = W0.hi | W2.lo << 16   (C3 >> 2 + 3k) & 0x00070007 = (c_6+k,  c_22+k)   k = 0..3
 *   C2 = W1.lo | W2.hi << 16   (C2 >> 1 + 3k) & 0x00070007 = (c_11+k, c_27+k)   k = 0..4
 * The four codes that straddle half-words, c5, c10, c21 and c26, come as bit fields that pair up the
 * same way, their activation words scaled by the fields' weights:
 *   (C1 >> 15) & 0x00010001 = (c5 & 1, c21 & 1)       times      x21 + x5 * 2^16
 *    C3        & 0x00030003 = (c5 >> 1, c21 >> 1)     times 2 * (x21 + x5 * 2^16)
 *   (C3 >> 14) & 0x00030003 = (c10 & 3, c26 & 3)      times      x26 + x10 * 2^16
 *    C2        & 0x00010001 = (c10 >> 2, c26 >> 2)    times 4 * (x26 + x10 * 2^16)
 * 18 multiplies per 32 elements and row; two rows share each activation word. The activation words
 * (18 per 32 elements, in that order) are prepared once per call, 512 elements at a time (1.25 KB of
 * stack). The codes are unsigned (0..7), the zero point (4, or the asymmetric z) comes off once per
 * group against the group's activation sum: isum = sum c * xq - z * sum xq; the float part is the
 * reference's (tw_group_step in driver.h), groups in order from 0.0f, carried over between the
 * 512-element passes through out[r]. */
#include "scalar.h"

/* Code generation only, as in matvec_q2.c (built-in model, symmetric, matvec instructions per token
 * without it: 1.31 M on RV32IMC and 1.65 M on Armv6-M instead of 1.05 M and 1.35 M). */
#pragma GCC optimize("no-schedule-insns", "no-tree-reassoc", "ira-algorithm=priority")

#define Q3_WORDS (TW_PASS_ELEMS / 32 * 18 + 2 * (TW_PASS_ELEMS / 32))   /* 18 words per 32 elements, sum and xs per group */
#define Q3_M3 0x00070007u
#define Q3_M2 0x00030003u
#define Q3_M1 0x00010001u

/* The activation word of the code pair (c_a, c_b): x_b + x_a * 2^16 (mod 2^32). */
#define Q3_PAIR(x, a, b) ((uint32_t)(int32_t)(x)[b] + ((uint32_t)(int32_t)(x)[a] << 16))

/* Groups of gs elements of x, n of them: per 32 elements the 18 words in the order rows_q3 reads
 * them, each group's words followed by its activation sum and its scale xs (the bits). */
TW_ALWAYS_INLINE void prepare_q3(uint32_t *v, const int8_t *x, const float *xs, uint32_t n, uint32_t gs) {
    for (uint32_t g = 0; g < n; g++) {
        int32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x += 32, v += 18) {
            for (uint32_t k = 0; k < 5; k++) v[k] = Q3_PAIR(x, k, 16 + k);
            v[5] = Q3_PAIR(x, 5, 21);
            for (uint32_t k = 0; k < 4; k++) v[6 + k] = Q3_PAIR(x, 6 + k, 22 + k);
            v[10] = v[5] << 1;                  /* the fields of weight 2 and 4 */
            v[11] = Q3_PAIR(x, 10, 26);
            for (uint32_t k = 0; k < 5; k++) v[12 + k] = Q3_PAIR(x, 11 + k, 27 + k);
            v[17] = v[11] << 2;
            for (uint32_t k = 0; k < 32; k++) s += x[k];
        }
        v = tw_put_group_tail(v, s, xs[g]);
    }
}

/* Half-words h0..h5 of a row's 32 elements (W0.lo W0.hi W1.lo ...), each read where it is needed:
 * C1 = q3_pack(p, 0, 3), C3 = q3_pack(p, 1, 4), C2 = q3_pack(p, 2, 5). */
typedef uint16_t __attribute__((may_alias, aligned(2))) q3_half;

TW_ALWAYS_INLINE uint32_t q3_pack(const uint8_t *p, uint32_t lo, uint32_t hi) {
    return (uint32_t)((const q3_half *)p)[lo] | (uint32_t)((const q3_half *)p)[hi] << 16;
}

/* Activation word i times the pair (C >> sh) & m of each row (C in a, b), added to the block sums. */
#define Q3_MAC(i, sh, m)                                                                          \
    do {                                                                                          \
        uint32_t xv_ = v[i];                                                                      \
        t0 += ((a >> (sh)) & (m)) * xv_;                                                          \
        if (n_rows == 2) t1 += ((b >> (sh)) & (m)) * xv_;                                         \
    } while (0)

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2, asym: constants after
 * inlining) over the prepared words v of those groups. */
TW_ALWAYS_INLINE void rows_q3(float *out, const uint32_t *v, const tw_tensor *w, uint32_t r, uint32_t n_rows,
                              int asym, uint32_t g0, uint32_t n_groups) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 8 * 3;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 8 * 3;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    for (uint32_t g = 0; g < n_groups; g++) {
        const uint32_t *group_end = v + gs / 32 * 18;
        int32_t s0 = 0, s1 = 0;
        do { /* 32 elements: three words of each row */
            uint32_t t0 = 0x8000u, t1 = 0x8000u;  /* 2^15: the shift below rounds the stray half away */
            uint32_t a = q3_pack(p, 0, 3), b = n_rows == 2 ? q3_pack(p + stride, 0, 3) : 0;   /* C1 */
#pragma GCC unroll 5
            for (uint32_t k = 0; k < 5; k++) Q3_MAC(k, 3 * k, Q3_M3);
            Q3_MAC(5, 15, Q3_M1);
            a = q3_pack(p, 1, 4);                                                              /* C3 */
            if (n_rows == 2) b = q3_pack(p + stride, 1, 4);
#pragma GCC unroll 4
            for (uint32_t k = 0; k < 4; k++) Q3_MAC(6 + k, 2 + 3 * k, Q3_M3);
            Q3_MAC(10, 0, Q3_M2);
            Q3_MAC(11, 14, Q3_M2);
            a = q3_pack(p, 2, 5);                                                              /* C2 */
            if (n_rows == 2) b = q3_pack(p + stride, 2, 5);
#pragma GCC unroll 5
            for (uint32_t k = 0; k < 5; k++) Q3_MAC(12 + k, 1 + 3 * k, Q3_M3);
            Q3_MAC(17, 0, Q3_M1);
            s0 += (int32_t)t0 >> 16;               /* arithmetic shift (GCC): the block's exact sum */
            if (n_rows == 2) s1 += (int32_t)t1 >> 16;
            v += 18;
            p += 12;
        } while (v != group_end);
        int32_t sum;
        float xsv;
        TW_GROUP_TAIL(v, sum, xsv);
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 4, sum, sc[0], xsv);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 4, sum, sc[ng], xsv);
        sc++;
        if (asym) zeros++;
    }
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

/* Every row of the prepared groups: two at a time, then the last one. */
TW_ALWAYS_INLINE void rows_by_two_q3(float *out, const uint32_t *v, const tw_tensor *w, int asym, uint32_t g0,
                                     uint32_t n) {
    uint32_t r = 0;
    for (; r + 2 <= w->rows; r += 2) rows_q3(out, v, w, r, 2, asym, g0, n);
    if (r < w->rows) rows_q3(out, v, w, r, 1, asym, g0, n);
}

void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t v[Q3_WORDS];
    tw_matvec_prepared(out, xq, xs, w, v, prepare_q3, rows_by_two_q3);
}
