/* matvec_q3 with Helium (MVE), both schemes; bit-identical to kernels/ref/matvec_q3.c.
 *
 * A row is a little-endian bit stream of 3-bit codes (8 per 3 bytes; element e at bits 3e..3e+2).
 * 16 elements (6 bytes) per vector: a byte gather (VLDRB.U8 with an offset vector, no alignment
 * needed) puts into each 16-bit lane j the two bytes that hold the pair of codes (2j, 2j+1) -- a
 * 6-bit field at bit 6j of the stream, bit s_j = 0, 6, 4, 10 (repeating) of its 16-bit window --
 * a per-lane VSHL.U16 by 5 - s_j brings code 2j to bits 5..7 (the top of the even byte) and code
 * 2j+1 to bits 8..10 (the bottom of the odd byte), a per-byte VSHL.U8 by 0 / 5 lifts the latter to
 * the top of its byte (the bits above it drop out) and VSHR.U8 #5 clears the bits below: byte lane
 * i holds code i (0..7), in the order of the plain activation load, and one VMLADAVA.S8 adds the
 * 16 products to the group's int32 sum, exactly. Five instructions per 16 codes and row, none of
 * them destructive (no register copies); the gathers read only the 6 bytes of their 16 elements
 * (never past a row). Two rows share the activation vectors; groups of 32 (one block) have no
 * inner loop. The zero point (4, or the asymmetric z) comes off once per group:
 * isum = sum c * xq - z * sum xq (mve.h). */

/* GCC 12's scheduling before register allocation would start all four gathers of a block at once
 * and run out of the eight Q registers (a spill to the stack and back in every block): not here. */
#pragma GCC optimize("no-schedule-insns")

#include "mve.h"

/* Byte lane 2j, 2j+1 <- bytes w_j, w_j + 1 of 6 (w = 0, 0, 1, 1, 3, 3, 4, 4); the second half of 32
 * elements is 6 bytes on. */
static const uint8_t tw_q3_offsets[16] = {0, 1, 0, 1, 1, 2, 1, 2, 3, 4, 3, 4, 4, 5, 4, 5};
static const int16_t tw_q3_shifts[8] = {5, -1, 1, -5, 5, -1, 1, -5};      /* 5 - s_j (< 0: right) */
static const int8_t tw_q3_lift[16] = {0, 5, 0, 5, 0, 5, 0, 5, 0, 5, 0, 5, 0, 5, 0, 5};

/* The 16 codes (0..7, element i in byte lane i) of 16 elements whose window bytes are gathered
 * from base at off. */
TW_ALWAYS_INLINE int8x16_t tw_q3_codes(const uint8_t *base, uint8x16_t off, int16x8_t sh, int8x16_t lift) {
    uint16x8_t u = vshlq_u16(vreinterpretq_u16_u8(vldrbq_gather_offset_u8(base, off)), sh);
    return vreinterpretq_s8_u8(vshrq_n_u8(vshlq_u8(vreinterpretq_u8_u16(u), lift), 5));
}

/* s + the products of the 32 codes of a row's 12 bytes at p with the activations x0, x1. */
TW_ALWAYS_INLINE int32_t tw_q3_block(int32_t s, const uint8_t *p, int8x16_t x0, int8x16_t x1, uint8x16_t off,
                                     int16x8_t sh, int8x16_t lift) {
    s = vmladavaq_s8(s, tw_q3_codes(p, off, sh, lift), x0);
    return vmladavaq_s8(s, tw_q3_codes(p, vaddq_n_u8(off, 6), sh, lift), x1);
}

TW_ALWAYS_INLINE void rows_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w, uint32_t r,
                              uint32_t n_rows, int asym, uint32_t g0, uint32_t n_groups, const int32_t *sums) {
    uint32_t gs = w->group_size, ng = w->padded_cols / gs, stride = w->padded_cols / 8 * 3;
    const uint8_t *p = (const uint8_t *)w->data + r * stride + g0 * gs / 8 * 3;
    const float *sc = w->scales + r * ng + g0;
    const uint8_t *zeros = asym ? w->zeros + r * ng + g0 : 0;
    const int8_t *x = xq + g0 * gs, *x_end = x + n_groups * gs;
    const float *xsg = xs + g0;
    const uint8x16_t off = vldrbq_u8(tw_q3_offsets);
    const int16x8_t sh = vldrhq_s16(tw_q3_shifts);
    const int8x16_t lift = vldrbq_s8(tw_q3_lift);
    float acc0 = g0 ? out[r] : 0.0f, acc1 = n_rows == 2 && g0 ? out[r + 1] : 0.0f;
    do {
        int32_t s0 = 0, s1 = 0;
        if (gs == 32) {   /* one block per group: no inner loop */
            int8x16_t x0 = vldrbq_s8(x), x1 = vldrbq_s8(x + 16);
            s0 = tw_q3_block(0, p, x0, x1, off, sh, lift);
            if (n_rows == 2) s1 = tw_q3_block(0, p + stride, x0, x1, off, sh, lift);
            x += 32;
            p += 12;
        } else {
            const int8_t *group_end = x + gs;
            do {   /* gs is a multiple of 32: 32 elements, 12 bytes of a row, per turn */
                int8x16_t x0 = vldrbq_s8(x), x1 = vldrbq_s8(x + 16);
                s0 = tw_q3_block(s0, p, x0, x1, off, sh, lift);
                if (n_rows == 2) s1 = tw_q3_block(s1, p + stride, x0, x1, off, sh, lift);
                x += 32;
                p += 12;
            } while (x != group_end);
        }
        int32_t sum = *sums++;
        acc0 = tw_group_step(acc0, s0, asym ? zeros[0] : 4, sum, sc[0], *xsg);
        if (n_rows == 2) acc1 = tw_group_step(acc1, s1, asym ? zeros[ng] : 4, sum, sc[ng], *xsg);
        xsg++;
        sc++;
        if (asym) zeros++;
    } while (x != x_end);
    out[r] = acc0;
    if (n_rows == 2) out[r + 1] = acc1;
}

void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w) {
    tw_matvec_chunks(out, xq, xs, w, rows_q3, 1);
}
