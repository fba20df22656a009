/* Kernels of the tiny-LLM runtime (the truth the host reference mirrors).
 *
 * Freestanding: <stdint.h> and <stddef.h> only; no libc, no libm, no board names.
 * The reference kernels are runtime/kernels_ref.c and the quantized matvecs of
 * firmware/kernels/ref/. A platform's `kernels:` field picks a kernel set under
 * firmware/kernels/ (README.md there): its files replace ref files of the same name, keep
 * these signatures AND produce bit-identical results (see the numeric rules in model.h).
 */
#ifndef TWIN_KERNELS_H
#define TWIN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* A tensor of the model image, viewed in place (nothing is copied).
 * bits 32: data is float32[rows][cols], scales and zeros are NULL.
 * Quantized (bits 2, 3, 4, 8): each row holds padded_cols codes c, grouped along cols in
 * groups of group_size; the element's integer level is q = c - z and its value (float)q * scale.
 *   scheme 0 (symmetric):  z is implicit: 2^(bits-1) for 2/3/4 bits (c in [1, 2^bits - 1]),
 *                          0 for 8 bits where c is stored as int8 in [-127, 127].
 *   scheme 1 (asymmetric): c unsigned in [0, 2^bits - 1], z = zeros[row][group] (uint8).
 * Packing, per row (rows start on a byte boundary; padded_cols is a multiple of 32):
 *   bits 8: one byte per element.
 *   bits 4: byte j holds element 2j in bits 0-3, element 2j+1 in bits 4-7.
 *   bits 2: byte j holds element 4j+k in bits 2k..2k+1.
 *   bits 3: each 3 bytes b0 b1 b2 hold 8 elements: with w = b0 | b1 << 8 | b2 << 16,
 *           element 8j+k is bits 3k..3k+2 of w (of bytes 3j..3j+2).
 * scales : float32[rows][padded_cols/group_size] (one per row and group).
 * zeros  : uint8[rows][padded_cols/group_size] for scheme 1 (they follow the scales in the
 *          image), NULL for scheme 0. */
typedef struct {
    const void *data;
    const float *scales;
    const uint8_t *zeros;
    uint32_t rows, cols, padded_cols;
    uint16_t group_size;
    uint8_t bits;
    uint8_t scheme; /* 0 = symmetric, 1 = asymmetric (zero points) */
} tw_tensor;

#define TW_SCHEME_SYMMETRIC 0u
#define TW_SCHEME_ASYMMETRIC 1u

/* Zero point z of (row, group g) of a quantized tensor (see tw_tensor above). */
static inline int32_t tw_group_zero(const tw_tensor *t, uint32_t row, uint32_t g) {
    if (t->scheme == TW_SCHEME_ASYMMETRIC) return t->zeros[row * (t->padded_cols / t->group_size) + g];
    return t->bits == 8 ? 0 : (int32_t)1 << (t->bits - 1);
}

/* (probability, token) pair used by nucleus sampling. */
typedef struct {
    float prob;
    int32_t index;
} tw_probindex;

/* --- math (IEEE binary32 basic operations only) --- */
float tw_sqrtf(float x);                         /* correctly rounded (FPU sqrt, else integer) */
float tw_expf(float x);                          /* range reduction + degree-6 polynomial */
void tw_sincosf(float x, float *s, float *c);    /* range reduction by pi/2 + polynomials */

/* --- vector kernels --- */
void rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps);
void softmax(float *x, uint32_t n);
void vec_add(float *x, const float *y, uint32_t n);
void swiglu(float *a, const float *b, uint32_t n);
void embed_row(float *out, const tw_tensor *emb, uint32_t row);
void rope_table(float *cos_t, float *sin_t, const float *freq, uint32_t n_pairs, uint32_t pos);
void rope_rotate(float *v, uint32_t n, uint32_t head_size, const float *cos_t, const float *sin_t);
/* out = sum over t of p[t] * v_t, p = softmax(scores * scale): the same operations as softmax(att)
 * then the sums; att (n_pos floats) is scratch, left holding exp(score - max) (p before its 1/sum). */
void attention_head(float *out, float *att, const float *q, const float *key_cache,
                    const float *value_cache, uint32_t kv_stride, uint32_t n_pos,
                    uint32_t head_size, float scale);
/* attention_head for n_heads consecutive heads that share one KV head (q, out: head_size floats a
 * head; att: att_stride floats a head): the same bits, each key and value loaded once for two heads
 * where it can. */
void attention_heads(float *out, float *att, uint32_t att_stride, const float *q, const float *key_cache,
                     const float *value_cache, uint32_t kv_stride, uint32_t n_pos, uint32_t head_size,
                     float scale, uint32_t n_heads);
/* The same over an int8 cache: position t's keys are k_q[t * kv_stride + i] with scale
 * k_scale[t * scale_stride] (values alike). Scores: s = 0; s = s + q[i] * (float)k_q[i];
 * att[t] = (s * k_scale) * scale. Output: w = att[t] * v_scale; out[i] = out[i] + w * (float)v_q[i]. */
void attention_head_q8(float *out, float *att, const float *q, const int8_t *key_q,
                       const float *key_scale, const int8_t *value_q, const float *value_scale,
                       uint32_t kv_stride, uint32_t scale_stride, uint32_t n_pos, uint32_t head_size,
                       float scale);

/* --- quantized matrix-vector product ---
 * out[r] = sum over groups g, sequentially from 0.0f, of ((float)isum(r, g) * scale[r][g]) * xs[g]
 * with isum(r, g) = sum over the group's j of (c[r][j] - z[r][g]) * xq[j], exact in int32
 * (= sum c*xq - z * sum xq; any exact integer evaluation is equally valid). Each matvec_qN
 * handles both schemes of its width. quantize_act is in kernels_ref.c; the matvecs are one file
 * each in the platform's kernel set (firmware/kernels/<set>/matvec_qN.c, else ref's). xq and the
 * weight rows are 4-byte aligned (the arena and the image align them; rows are whole words). */
void quantize_act(int8_t *xq, float *xs, const float *x, uint32_t n, uint32_t group_size);
void matvec_q8(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);
void matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);
void matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);
void matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);

/* --- sampling --- */
uint32_t rng_next(uint32_t *state);   /* xorshift32 */
float rng_float(uint32_t *state);     /* uniform in [0, 1) with 24 bits */
uint32_t argmax(const float *x, uint32_t n);
uint32_t sample_logits(const float *logits, uint32_t n, float temperature, float topp,
                       uint32_t *rng, float *probs, tw_probindex *scratch);

/* --- checksums --- */

#endif
