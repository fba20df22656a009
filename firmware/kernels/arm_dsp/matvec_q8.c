/* matvec_q8 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q8.c.
 *
 * Four codes and four activations per word load: SXTB16 / UXTB16 (plain and ROR #8) split a word
 * into its even and odd bytes as two int16 pairs, and two SMLADs add the four products to the
 * group's int32 sum. Four rows share each activation word (the x unpacking is done once per four
 * rows; the rows left over two or one at a time). Asymmetric codes are unsigned: isum = sum c * xq
 * - z * sum xq, with the groups' sums of xq computed once per call (TW_CHUNK in dsp.h). Every integer step is exact, and the float part is
 * the reference's: acc = acc + ((float)isum * scale) * xs, groups in order, per row. */
#include "dsp.h"
#include "kernels.h"

/* codes of a word as (c0, c2), (c1, c3) */
TW_ALWAYS_INLINE int32_t even8(uint32_t w, int asym) { return asym ? tw_uxtb16(w) : tw_sxtb16(w); }
TW_ALWAYS_INLINE int32_t odd8(uint32_t w, int asym) { return asym ? tw_uxtb16_ror8(w) : tw_sxtb16_ror8(w); }

/* One 4-element step of four rows (rows 0..3 at p, p + stride, q, q + stride with q = p + 2 stride),
 * in registers throughout: the activation word split once into (x0, x2), (x1, x3), each row's word
 * split alike (EXT: sxtb16 for signed codes, uxtb16 for unsigned), two SMLADs per row; x, p, q advance. */
#define Q8_ROW(EXT, S, ADDR)                                                                     \
    "ldr    %[w], " ADDR "\n\t"                                                                  \
    EXT "   %[t], %[w]\n\t"                                                                       \
    "smlad  %[" S "], %[t], %[xe], %[" S "]\n\t"                                                  \
    EXT "   %[t], %[w], ror #8\n\t"                                                               \
    "smlad  %[" S "], %[t], %[xo], %[" S "]\n\t"
#define Q8_STEP(EXT)                                                                             \
    "ldr    %[xe], [%[x]], #4\n\t"                                                               \
    "sxtb16 %[xo], %[xe], ror #8\n\t"                                                            \
    "sxtb16 %[xe], %[xe]\n\t"                                                                    \
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

/* Groups g0 .. g0 + n_groups - 1 of four rows from r (the common case: see rows_q8). */
TW_ALWAYS_INLINE void rows4_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                               int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs, *q = p + 2 * stride;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = g0 ? out[r + 1] : 0.0f;
    float acc2 = g0 ? out[r + 2] : 0.0f, acc3 = g0 ? out[r + 3] : 0.0f;
    do {
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        if (gs == 32 && asym) /* the common group: no loop around the block (see rows3_q4) */
            Q8_FOUR_ROWS_32("uxtb16", x, p, q, stride, s0, s1, s2, s3);
        else if (gs == 32)
            Q8_FOUR_ROWS_32("sxtb16", x, p, q, stride, s0, s1, s2, s3);
        else
            for (uint32_t k = gs / 32; k; k--) {
                if (asym)
                    Q8_FOUR_ROWS_32("uxtb16", x, p, q, stride, s0, s1, s2, s3);
                else
                    Q8_FOUR_ROWS_32("sxtb16", x, p, q, stride, s0, s1, s2, s3);
            }
        int32_t sum = asym ? *sums++ : 0;      /* symmetric 8-bit codes are signed: no zero point */
        float xsv = *xsg++;
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

/* Groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1, 2 or 4, asym:
 * constants after inlining); sums[i] is the activation sum of group g0 + i (asymmetric only). */
TW_ALWAYS_INLINE void rows_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    if (n_rows == 4) {
        rows4_q8(out, xq, xs, w, r, asym, g0, n_groups, sums);
        return;
    }
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    do {
        const int8_t *group_end = x + gs;
        int32_t s0 = 0, s1 = 0;
        do { /* gs is a multiple of 32: 8 elements per turn */
#pragma GCC unroll 2
            for (int k = 0; k < 2; k++) {
                uint32_t xw = tw_load4(x + 4 * k);
                int32_t xe = tw_sxtb16(xw), xo = tw_sxtb16_ror8(xw);
                uint32_t w0 = tw_load4(p + 4 * k);
                s0 = __smlad(even8(w0, asym), xe, s0);
                s0 = __smlad(odd8(w0, asym), xo, s0);
                if (n_rows == 2) {
                    uint32_t w1 = tw_load4(p + stride + 4 * k);
                    s1 = __smlad(even8(w1, asym), xe, s1);
                    s1 = __smlad(odd8(w1, asym), xo, s1);
                }
            }
            x += 8;
            p += 8;
        } while (x != group_end);
        int32_t sum = asym ? *sums++ : 0;      /* symmetric 8-bit codes are signed: no zero point */
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 0, sum, sc[0], *xsg);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 0, sum, sc[ng], *xsg);
        xsg++;
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_rows(out, xq, xs, w, rows_q8, 0, 4);
}
