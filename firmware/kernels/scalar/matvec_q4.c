/* matvec_q4 in portable scalar C, both schemes; bit-identical to kernels/ref/matvec_q4.c.
 *
 * Two products per multiply, exactly, as in matvec_q2.c. A row word a holds 8 codes (element k in
 * bits 4k..4k+3), so p_k = (a >> 4k) & 0x000F000F is the pair (c_k, c_k+4) = c_k + c_k+4 * 2^16 and,
 * with the activation word v_k = x_k+4 + x_k * 2^16 (k = 0..3), mod 2^32
 *     p_k * v_k = c_k * x_k+4 + (c_k * x_k + c_k+4 * x_k+4) * 2^16:
 * the high half gathers the two wanted products, the low half a stray one (it carries into the high
 * half). Two exact identities mod 2^32, folded into the prepared activations, make it cheaper:
 *  - centred codes. With D = 8 * 0x00010001, (D - p_k) * v_k has the same shape with d = 8 - c
 *    (-7..8) in place of c, and sum_k D * v_k over a block depends on the activations only: it goes
 *    into the block sum's starting value. Centred, a product d * x lies in [-1024, 1016] for any int8
 *    x (-128 included), so over a block of 32 elements the wanted half lies in [-32768, 32512] and
 *    the stray one (16 products) in [-16384, 16256]: both within int16 (uncentred, c * x lies in
 *    [-1920, 1905], and blocks of 16 elements, two words, are the most that fit), so with the
 *    block's sum started at 2^15 its top half, shifted arithmetically, is exactly the block's sum of
 *    (8 - c) * xq;
 *  - p_0 needs no AND: the word is a = p_0 + 2^4 p_1 + 2^8 p_2 + 2^12 p_3, so
 *    sum_k p_k * v_k = a * v_0 + sum_{k>0} p_k * (v_k - 2^4k v_0).
 * Per row word: three shifts, three ANDs, four multiplies and four adds for 8 MACs. The words of a
 * block of 32 elements are its start C = 2^15 + D * sum v_k and, per row word, -v_0 and
 * 2^4k v_0 - v_k (k = 1..3), prepared once per call, 512 elements at a time (1.2 KB of stack); two
 * rows share each activation word. The zero point (8, or the asymmetric z) comes off once per group
 * against the group's activation sum: isum = sum (c - 8) * xq - (z - 8) * sum xq; the float part is
 * the reference's (tw_group_step in driver.h), groups in order from 0.0f, carried over between the
 * 512-element passes through out[r]. */
#include "scalar.h"

/* Code generation only, as in matvec_q2.c: GCC 12 keeps the block in registers without
 * pre-allocation scheduling and reassociation and with the priority register allocator. */
#pragma GCC optimize("no-schedule-insns", "no-tree-reassoc", "ira-algorithm=priority")

#define Q4_BLOCK 17u                  /* words per 32 elements: the start C, then 4 per row word */
#define Q4_WORDS (TW_PASS_ELEMS / 32 * Q4_BLOCK + 2 * (TW_PASS_ELEMS / 32))   /* then sum and xs per group */
#define Q4_M 0x000F000Fu

/* Word i of the second row of a pair, whose first row's words are at p. Armv6-M (eight low
 * registers) reads it with a register offset, so that no second row pointer takes a register; the
 * other cores through a pointer of its own (one add per block, none per word). */
#if defined(__ARM_ARCH_ISA_THUMB) && __ARM_ARCH_ISA_THUMB == 1
#define Q4_ROW1(p, i) (((const tw_word *)(p))[stride / 4 + (i)])
#else
#define Q4_ROW1(p, i) tw_load4((p) + stride + 4 * (i))
#endif

/* The activation word of the code pair (c_a, c_b): x_b + x_a * 2^16 (mod 2^32). */
#define Q4_PAIR(x, a, b) ((uint32_t)(int32_t)(x)[b] + ((uint32_t)(int32_t)(x)[a] << 16))

/* Groups of gs elements of x, n of them: per 32 elements the start C and, per 8 elements e, the
 * words -v_0, 2^4 v_0 - v_1, 2^8 v_0 - v_2, 2^12 v_0 - v_3 (v_k = Q4_PAIR(e, k, k + 4)), each
 * group's words followed by its activation sum and its scale xs (the bits), read back in that order
 * by rows_q4. */
TW_ALWAYS_INLINE void prepare_q4(uint32_t *v, const int8_t *x, const float *xs, uint32_t n, uint32_t gs) {
    for (uint32_t g = 0; g < n; g++) {
        int32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x += 32, v += Q4_BLOCK) {
            uint32_t c = 0;   /* sum v_k over the block */
            for (uint32_t i = 0; i < 4; i++) {
                const int8_t *e = x + 8 * i;
                uint32_t v0 = Q4_PAIR(e, 0, 4);
                v[1 + 4 * i] = 0u - v0;
                c += v0;
                for (uint32_t k = 1; k < 4; k++) {
                    uint32_t vk = Q4_PAIR(e, k, k + 4);
                    v[1 + 4 * i + k] = (v0 << 4 * k) - vk;
                    c += vk;
                }
            }
            v[0] = 0x8000u + 8u * (c + (c << 16));
            /* c = lo + hi * 2^16 (mod 2^32), each half a sum of 16 activations (|.| <= 2048): the
             * block's activation sum is lo + hi */
            int32_t hi = (int32_t)(c + 0x8000u) >> 16;
            s += (int32_t)(c - ((uint32_t)hi << 16)) + hi;
        }
        v = tw_put_group_tail(v, s, xs[g]);
    }
}

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2; asym, and one: groups
 * of 32, one block each: constants after inlining) over the prepared words v of those groups. */
TW_ALWAYS_INLINE void rows_q4(float *out, const uint32_t *v, const tw_tensor *w, uint32_t r, uint32_t n_rows,
                              int asym, int one, uint32_t g0, uint32_t n_groups) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    uint32_t group_words = gs / 32 * Q4_BLOCK;
    const uint32_t *group_end = v + group_words, *end = v + n_groups * (group_words + 2);
    int32_t s0 = 0, s1 = 0;
    for (;;) { /* 32 elements: four words of each row */
        uint32_t t0 = v[0], t1 = v[0];
#pragma GCC unroll 4
        for (uint32_t i = 0; i < 4; i++) {
            uint32_t a = tw_load4(p + 4 * i), b = n_rows == 2 ? Q4_ROW1(p, i) : 0;
            const uint32_t *u = v + 1 + 4 * i;
#pragma GCC unroll 3
            for (uint32_t k = 1; k < 4; k++) {
                uint32_t xv = u[k];
                t0 += ((a >> 4 * k) & Q4_M) * xv;
                if (n_rows == 2) t1 += ((b >> 4 * k) & Q4_M) * xv;
            }
            uint32_t xv = u[0];
            t0 += a * xv;
            if (n_rows == 2) t1 += b * xv;
        }
        s0 -= (int32_t)t0 >> 16;                /* arithmetic shift (GCC): the block's exact sum */
        if (n_rows == 2) s1 -= (int32_t)t1 >> 16;
        v += Q4_BLOCK;
        p += 16;
        if (!one && v != group_end) continue;   /* the group's next block */
        int32_t sum;
        float xsv;
        TW_GROUP_TAIL(v, sum, xsv);
        acc0 = tw_group_step(acc0, s0, asym ? (int32_t)zeros[0] - 8 : 0, sum, sc[0], xsv);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? (int32_t)zeros[ng] - 8 : 0, sum, sc[ng], xsv);
        sc++;
        if (asym) zeros++;
        if (v == end) break;
        if (!one) group_end = v + group_words;
        s0 = s1 = 0;
    }
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

/* Every row of the prepared groups: two at a time, then the last one. */
TW_ALWAYS_INLINE void rows_by_two_q4(float *out, const uint32_t *v, const tw_tensor *w, int asym, int one,
                                     uint32_t g0, uint32_t n) {
    uint32_t r = 0;
    for (; r + 2 <= w->rows; r += 2) rows_q4(out, v, w, r, 2, asym, one, g0, n);
    if (r < w->rows) rows_q4(out, v, w, r, 1, asym, one, g0, n);
}

/* One pass over every row (the group size 32 as a constant: no loop over a group's blocks). */
TW_ALWAYS_INLINE void pass_q4(float *out, const uint32_t *v, const tw_tensor *w, int asym, uint32_t g0,
                              uint32_t n) {
    if (w->group_size == 32)
        rows_by_two_q4(out, v, w, asym, 1, g0, n);
    else
        rows_by_two_q4(out, v, w, asym, 0, g0, n);
}

void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t v[Q4_WORDS];
    tw_matvec_prepared(out, xq, xs, w, v, prepare_q4, pass_q4);
}
