/* matvec_q8 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q8.c.
 *
 * Four codes and four activations per word: SXTB16 / UXTB16 (plain and ROR #8) split a word into
 * its even and odd bytes as two int16 pairs, and two SMLADs add the four products to the group's
 * int32 sum. The activations are split so once per call, TW_PASS_ELEMS at a time (driver.h) on the
 * stack (two words per 4 elements, read with one LDRD); four rows share each loaded pair (the rows
 * left over one at a time). Asymmetric codes are unsigned: isum = sum c * xq - z * sum xq, with the
 * groups' sums of xq taken in the same pass. Every integer step is exact, and the float part is the
 * reference's: acc = acc + ((float)isum * scale) * xs, groups in order, per row. */
#include "dsp.h"
#include "kernels.h"

/* codes of a word as (c0, c2), (c1, c3) */
TW_ALWAYS_INLINE int32_t even8(uint32_t w, int asym) { return asym ? tw_uxtb16(w) : tw_sxtb16(w); }
TW_ALWAYS_INLINE int32_t odd8(uint32_t w, int asym) { return asym ? tw_uxtb16_ror8(w) : tw_sxtb16_ror8(w); }

/* One 4-element step of four rows (rows 0..3 at p, p + stride, q, q + stride with q = p + 2 stride),
 * in registers throughout: the activation pair (x0, x2), (x1, x3) loaded, each row's word split
 * alike (EXT: sxtb16 for signed codes, uxtb16 for unsigned), two SMLADs per row; x, p, q advance. */
#define Q8_ROW(EXT, S, ADDR)                                                                     \
    "ldr    %[w], " ADDR "\n\t"                                                                  \
    EXT "   %[t], %[w]\n\t"                                                                       \
    "smlad  %[" S "], %[t], %[xe], %[" S "]\n\t"                                                  \
    EXT "   %[t], %[w], ror #8\n\t"                                                               \
    "smlad  %[" S "], %[t], %[xo], %[" S "]\n\t"
#define Q8_STEP(EXT)                                                                             \
    "ldrd   %[xe], %[xo], [%[x]], #8\n\t"                                                        \
    Q8_ROW(EXT, "s1", "[%[p], %[stride]]") Q8_ROW(EXT, "s0", "[%[p]], #4")                       \
    Q8_ROW(EXT, "s3", "[%[q], %[stride]]") Q8_ROW(EXT, "s2", "[%[q]], #4")
#define Q8_STEP8(EXT) Q8_STEP(EXT) Q8_STEP(EXT) Q8_STEP(EXT) Q8_STEP(EXT) \
                      Q8_STEP(EXT) Q8_STEP(EXT) Q8_STEP(EXT) Q8_STEP(EXT)

/* 32 elements of four rows: sk += row k's codes . x (signed or unsigned codes) */
#define Q8_FOUR_ROWS_32(EXT, x, p, q, stride, s0, s1, s2, s3)                                  \
    do {                                                                                        \
        uint32_t xe, xo, w_, t_;                                                                \
        __asm__(Q8_STEP8(EXT)                                                                   \
                : [x] "+r"(x), [p] "+r"(p), [q] "+r"(q), [s0] "+r"(s0), [s1] "+r"(s1),            \
                  [s2] "+r"(s2), [s3] "+r"(s3), [xe] "=&r"(xe), [xo] "=&r"(xo), [w] "=&r"(w_),    \
                  [t] "=&r"(t_)                                                                 \
                : [stride] "r"(stride)                                                          \
                : "memory");                                                                    \
    } while (0)

/* The activations of n_groups groups of gs split into pr: per group its gs / 2 words ((x0, x2),
 * (x1, x3) per 4 elements), then the sum of its int8 activations (USADA8 on the bytes biased by
 * 128) and its scale xs (bits), read by the group step through the same pointer. Not inlined:
 * inlined, it costs the rows' loop registers and spills. */
static __attribute__((noinline)) void matvec_q8_pairs(uint32_t *pr, const int8_t *x, const float *xs, uint32_t n_groups, uint32_t gs) {
    for (uint32_t i = 0; i < n_groups; i++) {
        uint32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x += 4, pr += 2) {
            uint32_t a = tw_load4(x);
            s = __usada8(a ^ 0x80808080u, 0, s);
            pr[0] = (uint32_t)tw_sxtb16(a);
            pr[1] = (uint32_t)tw_sxtb16_ror8(a);
        }
        pr = tw_put_group_tail(pr, (int32_t)(s - 128u * gs), xs[i]);
    }
}

/* Groups g0 .. g0 + n_groups - 1 of four rows from r, their activations in pr (matvec_q8_pairs). */
TW_ALWAYS_INLINE void rows4_q8(float *out, const uint32_t *pr, const tw_tensor *w, uint32_t r, int asym,
                               uint32_t gs, uint32_t g0, uint32_t n_groups) {
    uint32_t ng = w->padded_cols / gs, stride = w->padded_cols;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs, *q = p + 2 * stride;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const uint32_t *x = pr, *x_end = pr + n_groups * (gs / 2 + 2);
    float acc0 = g0 ? out[r] : 0.0f, acc1 = g0 ? out[r + 1] : 0.0f;
    float acc2 = g0 ? out[r + 2] : 0.0f, acc3 = g0 ? out[r + 3] : 0.0f;
    do {
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, sum;
        float xsv;
        for (uint32_t k = gs / 32; k; k--) {
            if (asym)
                Q8_FOUR_ROWS_32("uxtb16", x, p, q, stride, s0, s1, s2, s3);
            else
                Q8_FOUR_ROWS_32("sxtb16", x, p, q, stride, s0, s1, s2, s3);
        }
        TW_GROUP_TAIL(x, sum, xsv);
        if (!asym) sum = 0;                 /* symmetric 8-bit codes are signed: no zero point */
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 0, sum, sc[0], xsv);
        acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 0, sum, sc[ng], xsv);
        acc2 = tw_group_step(acc2, s2, asym ? zeros[2 * ng] : 0, sum, sc[2 * ng], xsv);
        acc3 = tw_group_step(acc3, s3, asym ? zeros[3 * ng] : 0, sum, sc[3 * ng], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    out[r + 1] = acc1;
    out[r + 2] = acc2;
    out[r + 3] = acc3;
}

/* One row r's groups g0 .. g0 + n_groups - 1 in C (the rows left over by four). */
TW_ALWAYS_INLINE void row1_q8(float *out, const uint32_t *pr, const tw_tensor *w, uint32_t r, int asym,
                              uint32_t g0, uint32_t n_groups) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const uint32_t *x = pr, *x_end = pr + n_groups * (gs / 2 + 2);
    float acc = g0 ? out[r] : 0.0f;
    do {
        const uint32_t *group_end = x + gs / 2;
        int32_t s0 = 0, sum;
        float xsv;
        do { /* gs is a multiple of 32: 8 elements per turn */
            uint32_t w0 = tw_load4(p), w1 = tw_load4(p + 4);
            s0 = __smlad(even8(w0, asym), (int32_t)x[0], s0);
            s0 = __smlad(odd8(w0, asym), (int32_t)x[1], s0);
            s0 = __smlad(even8(w1, asym), (int32_t)x[2], s0);
            s0 = __smlad(odd8(w1, asym), (int32_t)x[3], s0);
            x += 4;
            p += 8;
        } while (x != group_end);
        TW_GROUP_TAIL(x, sum, xsv);
        acc = tw_group_step(acc, s0, asym ? zeros[0] : 0, asym ? sum : 0, sc[0], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc;
}

/* Every row over one chunk of groups (asym: a constant after inlining; the common group size 32
 * as a constant too, so that no loop or counter is left around its block). */
TW_ALWAYS_INLINE void chunk_q8(float *out, const uint32_t *pr, const tw_tensor *w, int asym, uint32_t g0,
                               uint32_t n_groups) {
    uint32_t r = 0, gs = w->group_size;
    if (gs == 32)
        for (; r + 4 <= w->rows; r += 4) rows4_q8(out, pr, w, r, asym, 32, g0, n_groups);
    else
        for (; r + 4 <= w->rows; r += 4) rows4_q8(out, pr, w, r, asym, gs, g0, n_groups);
    for (; r < w->rows; r++) row1_q8(out, pr, w, r, asym, g0, n_groups);
}

void matvec_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    uint32_t v[TW_PASS_ELEMS / 2 + 2 * TW_PASS_ELEMS / 32]; /* the split words, and two words per group */
    tw_matvec_prepared(out, xq, xs, w, v, matvec_q8_pairs, chunk_q8);
}
