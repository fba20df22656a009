/* The matvec driver the optimized kernel sets share (firmware/kernels/README.md): the reference's
 * float step per group and, for a set whose header defines TW_CHUNK and tw_group_sums() with its
 * own instructions, the chunked matvec: two rows at a time over one activation vector, the groups
 * TW_CHUNK at a time with their activation sums for the zero points (arm_dsp takes the float step
 * only: it loops over activations prepared once per call). Portable C: a set's header defines
 * TW_ALWAYS_INLINE (and those two), then includes this. */
#ifndef TW_KERNELS_DRIVER_H
#define TW_KERNELS_DRIVER_H

/* The end of one group of one row: the zero point z off the exact sum (isum = sum c * xq - z * sum xq),
 * then the reference's float step, in its order. */
TW_ALWAYS_INLINE float tw_group_step(float acc, int32_t s, int32_t z, int32_t sum, float scale, float xs) {
    return acc + ((float)(s - z * sum) * scale) * xs;
}

/* Kernels that prepare their activations once per call (arm_dsp's, scalar's 2- and 3-bit): a pass
 * takes as many whole groups as TW_PASS_ELEMS elements hold (16, 8 or 4 groups of 32, 64 or 128),
 * `prepare` writes them into v in the kernel's own layout, each group's words followed by its
 * activation sum and its scale (bits), which TW_GROUP_TAIL reads back and steps over, and `pass`
 * runs every row over them (asym: a constant after inlining). A row's float sum carries over
 * between passes through out[r], exactly: its groups are still added in order. */
#define TW_PASS_ELEMS 512u

typedef void tw_prepare_fn(uint32_t *v, const int8_t *x, const float *xs, uint32_t n_groups, uint32_t gs);
typedef void tw_pass_fn(float *out, const uint32_t *v, const tw_tensor *w, int asym, uint32_t g0,
                        uint32_t n_groups);

#define TW_GROUP_TAIL(x, sum, xsv)                                                            \
    do {                                                                                        \
        union { uint32_t u; float f; } v_ = {(x)[1]};                                           \
        (sum) = (int32_t)(x)[0];                                                                \
        (xsv) = v_.f;                                                                           \
        (x) += 2;                                                                               \
    } while (0)

/* A prepare function's end of one group: its activation sum and scale, as TW_GROUP_TAIL reads them;
 * returns where the next group's words start. */
TW_ALWAYS_INLINE uint32_t *tw_put_group_tail(uint32_t *v, int32_t sum, float xs) {
    union { float f; uint32_t u; } b = {xs};
    v[0] = (uint32_t)sum;
    v[1] = b.u;
    return v + 2;
}

/* The matvec around a prepared-activation kernel: v, the caller's buffer, holds a pass. */
TW_ALWAYS_INLINE void tw_matvec_prepared(float *out, const int8_t *xq, const float *xs, const tw_tensor *w,
                                         uint32_t *v, tw_prepare_fn *prepare, tw_pass_fn *pass) {
    const tw_tensor wl = *w; /* a local copy: the stores to out[] cannot alias it, so nothing is reloaded */
    uint32_t gs = wl.group_size, ng = wl.padded_cols / gs, per = TW_PASS_ELEMS / 32;
    while (per * gs > TW_PASS_ELEMS) per >>= 1;   /* TW_PASS_ELEMS / gs without a division (Armv6-M) */
    for (uint32_t g0 = 0; g0 < ng; g0 += per) {
        uint32_t n = ng - g0 < per ? ng - g0 : per;
        prepare(v, xq + g0 * gs, xs + g0, n, gs);
        if (wl.scheme == TW_SCHEME_ASYMMETRIC)
            pass(out, v, &wl, 1, g0, n);
        else
            pass(out, v, &wl, 0, g0, n);
    }
}

#ifdef TW_CHUNK
/* A kernel's inner part: groups g0 .. g0 + n_groups - 1 of rows r .. r + n_rows - 1 (n_rows 1 or 2;
 * the rows share each unpacked activation word); sums[i] is the activation sum of group g0 + i. */
typedef void tw_rows_fn(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                        uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums);

/* Rows two at a time, then the last one. */
TW_ALWAYS_INLINE void tw_rows_by_two(float *out, const int8_t *xq, const float *xs, const tw_tensor *w,
                                     tw_rows_fn *rows, int asym, uint32_t g0, uint32_t n_groups,
                                     const int32_t *sums) {
    uint32_t r = 0;
    for (; r + 2 <= w->rows; r += 2) rows(out, xq, xs, w, r, 2, asym, g0, n_groups, sums);
    if (r < w->rows) rows(out, xq, xs, w, r, 1, asym, g0, n_groups, sums);
}

/* The matvec around a kernel's rows (inlined with rows and the scheme constant): the groups TW_CHUNK
 * at a time with their activation sums, every row per chunk, two rows per call. A kernel whose
 * symmetric codes need no zero point (8-bit) says so with sym_zero = 0: one pass over all groups,
 * no sums. */
TW_ALWAYS_INLINE void tw_matvec_chunks(float *out, const int8_t *xq, const float *xs, const tw_tensor *w,
                                       tw_rows_fn *rows, int sym_zero) {
    const tw_tensor wl = *w; /* a local copy: the stores to out[] cannot alias it, so nothing is reloaded */
    w = &wl;
    uint32_t gs = w->group_size, ng = w->padded_cols / gs;
    int asym = w->scheme == TW_SCHEME_ASYMMETRIC;
    if (!asym && !sym_zero) {
        tw_rows_by_two(out, xq, xs, w, rows, 0, 0, ng, 0);
        return;
    }
    int32_t sums[TW_CHUNK];
    for (uint32_t g0 = 0; g0 < ng; g0 += TW_CHUNK) {
        uint32_t n = ng - g0 < TW_CHUNK ? ng - g0 : TW_CHUNK;
        tw_group_sums(sums, xq + g0 * gs, n, gs);
        if (asym)
            tw_rows_by_two(out, xq, xs, w, rows, 1, g0, n, sums);
        else
            tw_rows_by_two(out, xq, xs, w, rows, 0, g0, n, sums);
    }
}
#endif

#endif
