/* matvec_q4 with the Arm DSP extension, both schemes; bit-identical to kernels/ref/matvec_q4.c.
 *
 * One word of a row holds 8 codes, element k in bits 4k..4k+3, so (w >> 4k) & 0x000F000F is the
 * int16 pair (c_k, c_k+4) for k = 0..3: one AND (with a shifted operand) per pair, no unpacking.
 * The activations are paired to match once per call, a chunk of TW_PAIRED at a time on the stack:
 * PKHBT / PKHTB gather the bytes (x0 x1 x4 x5) and (x2 x3 x6 x7) of two activation words, SXTB16
 * (plain and ROR #8) makes the words (x0, x4), (x1, x5), (x2, x6), (x3, x7), which the rows then
 * read with two LDRDs per 8 elements. SMLAD adds two products at a time to the exact int32 sum of
 * codes times activations; the zero point (8, or the asymmetric z) comes off once per group,
 * isum = sum c * xq - z * sum xq, with the groups' sums of xq taken in the same pass. Three rows
 * share each loaded activation pair. The float part is the reference's:
 * acc = acc + ((float)isum * scale) * xs, groups in order, per row. */
#include "dsp.h"
#include "kernels.h"

/* One 8-element step of three rows (at p, p + stride, p + 2 stride), in registers throughout: the
 * four activation pairs loaded, then each row's word loaded, its four code pairs masked out and
 * multiplied in (SMLAD); x and p advance. */
#define Q4_ROW(S, ADDR)                                                                          \
    "ldr    %[w], " ADDR "\n\t"                                                                  \
    "and    %[t], %[w], %[m]\n\t"                                                                \
    "smlad  %[" S "], %[t], %[x04], %[" S "]\n\t"                                                 \
    "and    %[t], %[m], %[w], lsr #4\n\t"                                                        \
    "smlad  %[" S "], %[t], %[x15], %[" S "]\n\t"                                                 \
    "and    %[t], %[m], %[w], lsr #8\n\t"                                                        \
    "smlad  %[" S "], %[t], %[x26], %[" S "]\n\t"                                                 \
    "and    %[t], %[m], %[w], lsr #12\n\t"                                                       \
    "smlad  %[" S "], %[t], %[x37], %[" S "]\n\t"
#define Q4_STEP                                                                                  \
    "ldrd   %[x26], %[x37], [%[x], #8]\n\t"                                                      \
    "ldrd   %[x04], %[x15], [%[x]], #16\n\t"                                                     \
    Q4_ROW("s1", "[%[p], %[stride]]") Q4_ROW("s2", "[%[p], %[stride], lsl #1]")                  \
    Q4_ROW("s0", "[%[p]], #4")

/* 32 elements of three rows: s[k] += row k's codes . x */
#define Q4_THREE_ROWS_32(x, p, stride, s0, s1, s2)                                            \
    do {                                                                                        \
        uint32_t x04, x15, x26, x37, w_, t_;                                                    \
        __asm__(Q4_STEP Q4_STEP Q4_STEP Q4_STEP                                                 \
                : [x] "+r"(x), [p] "+r"(p), [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2),          \
                  [x04] "=&r"(x04), [x15] "=&r"(x15), [x26] "=&r"(x26), [x37] "=&r"(x37),         \
                  [w] "=&r"(w_), [t] "=&r"(t_)                                                  \
                : [stride] "r"(stride), [m] "r"(0x000F000Fu)                                    \
                : "memory");                                                                    \
    } while (0)

/* The activations of n_groups groups of gs paired into pr: per group its gs / 2 pair words (four
 * per 8 elements, above), then the sum of its int8 activations (USADA8 on the bytes biased by 128)
 * and its scale xs (bits), read by the group step through the same pointer. */
TW_ALWAYS_INLINE void pair_q4(uint32_t *pr, const int8_t *x, const float *xs, uint32_t n_groups, uint32_t gs) {
    for (uint32_t i = 0; i < n_groups; i++) {
        uint32_t s = 0;
        for (const int8_t *end = x + gs; x != end; x += 8, pr += 4) {
            uint32_t a = tw_load4(x), b = tw_load4(x + 4);
            s = __usada8(a ^ 0x80808080u, 0, s);
            s = __usada8(b ^ 0x80808080u, 0, s);
            uint32_t lo = tw_pkhbt(a, b), hi = tw_pkhtb(a, b); /* (x0 x1 x4 x5), (x2 x3 x6 x7) */
            pr[0] = (uint32_t)tw_sxtb16(lo);
            pr[1] = (uint32_t)tw_sxtb16_ror8(lo);
            pr[2] = (uint32_t)tw_sxtb16(hi);
            pr[3] = (uint32_t)tw_sxtb16_ror8(hi);
        }
        pr[0] = s - 128u * gs;
        union { float f; uint32_t u; } v = {xs[i]};
        pr[1] = v.u;
        pr += 2;
    }
}

/* Groups g0 .. g0 + n_groups - 1 of three rows from r, their activations in pr (pair_q4). */
TW_ALWAYS_INLINE void rows3_q4(float *out, const uint32_t *pr, const tw_tensor *w, uint32_t r, int asym,
                               uint32_t gs, uint32_t g0, uint32_t n_groups) {
    uint32_t ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const uint32_t *x = pr, *x_end = pr + n_groups * (gs / 2 + 2);
    float acc0 = g0 ? out[r] : 0.0f, acc1 = g0 ? out[r + 1] : 0.0f, acc2 = g0 ? out[r + 2] : 0.0f;
    do {
        int32_t s0 = 0, s1 = 0, s2 = 0, sum;
        float xsv;
        for (uint32_t k = gs / 32; k; k--) Q4_THREE_ROWS_32(x, p, stride, s0, s1, s2);
        TW_GROUP_TAIL(x, sum, xsv);
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 8, sum, sc[0], xsv);
        acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 8, sum, sc[ng], xsv);
        acc2 = tw_group_step(acc2, s2, asym ? zeros[2 * ng] : 8, sum, sc[2 * ng], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    out[r + 1] = acc1;
    out[r + 2] = acc2;
}

/* One row r's groups g0 .. g0 + n_groups - 1 in C (the rows left over by three). */
TW_ALWAYS_INLINE void row1_q4(float *out, const uint32_t *pr, const tw_tensor *w, uint32_t r, int asym,
                              uint32_t g0, uint32_t n_groups) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 2;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 2;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const uint32_t *x = pr, *x_end = pr + n_groups * (gs / 2 + 2);
    float acc = g0 ? out[r] : 0.0f;
    do {
        const uint32_t *group_end = x + gs / 2;
        int32_t s0 = 0, sum;
        float xsv;
        do { /* gs is a multiple of 32: 8 elements per turn */
            uint32_t m = 0x000F000Fu; /* (c_k, c_k+4) = (w >> 4k) & m */
            uint32_t w0 = tw_load4(p);
            s0 = __smlad((int32_t)(w0 & m), (int32_t)x[0], s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 4), (int32_t)x[1], s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 8), (int32_t)x[2], s0);
            s0 = __smlad((int32_t)TW_AND_LSR(w0, m, 12), (int32_t)x[3], s0);
            x += 4;
            p += 4;
        } while (x != group_end);
        TW_GROUP_TAIL(x, sum, xsv);
        acc = tw_group_step(acc, s0, asym ? zeros[0] : 8, sum, sc[0], xsv);
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc;
}

/* Every row over one chunk of groups (asym: a constant after inlining; the common group size 32
 * as a constant too, so that no loop or counter is left around its block). */
TW_ALWAYS_INLINE void chunk_q4(float *out, const uint32_t *pr, const tw_tensor *w, int asym, uint32_t g0,
                               uint32_t n_groups) {
    uint32_t r = 0, gs = w->group_size;
    if (gs == 32)
        for (; r + 3 <= w->rows; r += 3) rows3_q4(out, pr, w, r, asym, 32, g0, n_groups);
    else
        for (; r + 3 <= w->rows; r += 3) rows3_q4(out, pr, w, r, asym, gs, g0, n_groups);
    for (; r < w->rows; r++) row1_q4(out, pr, w, r, asym, g0, n_groups);
}

void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    const tw_tensor wl = *w; /* a local copy: the stores to out[] cannot alias it, so nothing is reloaded */
    uint32_t gs = wl.group_size, ng = wl.padded_cols / gs, per = TW_PAIRED / gs;
    uint32_t pr[TW_PAIRED / 2 + 2 * TW_PAIRED / 32]; /* the pairs, and two words per group */
    for (uint32_t g0 = 0; g0 < ng; g0 += per) {
        uint32_t n = ng - g0 < per ? ng - g0 : per;
        pair_q4(pr, xq + g0 * gs, xs + g0, n, gs);
        if (wl.scheme == TW_SCHEME_ASYMMETRIC)
            chunk_q4(out, pr, &wl, 1, g0, n);
        else
            chunk_q4(out, pr, &wl, 0, g0, n);
    }
}
