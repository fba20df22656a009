/* Reference kernels: plain C, IEEE binary32 basic operations only (rules in model.h).
 * twin/model/reference.py mirrors every function here step by step. The quantized matrix-vector
 * products live in a kernel set under firmware/kernels/ (ref: the truth; arm_dsp: faster). */
#include "kernels.h"

typedef union {
    float f;
    uint32_t u;
} f32bits;

/* ---------------------------------------------------------------- math */

/* v >= 0 ? 0.5f : -0.5f for every v but nan, from v's sign bit (no float compare; for v = -0
 * it is -0.5f, and (int)(-0 - 0.5f) = (int)(-0 + 0.5f) = 0: the rounding rule 3 of model.h). */
static inline float half_like(float v) {
    f32bits b = {v}, h = {0.5f};
    h.u |= b.u & 0x80000000u;
    return h.f;
}

/* Correctly rounded square root: IEEE sqrt for every input but signaling nans (quieted by the FPU,
 * returned as they are by the integer root), so the host mirror is numpy's float32 sqrt. With a
 * single-precision FPU its square root instruction (IEEE: correctly rounded); else a bitwise integer
 * square root of the mantissa, two bits of the 48-bit operand a step in 32-bit registers. */
float tw_sqrtf(float x) {
#if defined(__GNUC__) && defined(__ARM_FP) && (__ARM_FP & 4)
    float r;
    __asm__("vsqrt.f32 %0, %1" : "=t"(r) : "t"(x));
    return r;
#else
    f32bits v = {x};
    int32_t e = (int32_t)((v.u >> 23) & 0xFFu);
    uint32_t man = v.u & 0x7FFFFFu;
    if ((v.u & 0x7FFFFFFFu) == 0) return x;             /* +-0 */
    if (e == 0xFF && (man != 0 || !(v.u >> 31))) return x; /* nan, +inf */
    if (v.u >> 31) { v.u = 0x7FC00000u; return v.f; }   /* negative: nan */
    if (e == 0) { /* subnormal: normalize */
        e = 1;
        while (!(man & 0x800000u)) { man <<= 1; e--; }
    } else {
        man |= 0x800000u;
    }
    int32_t ue = e - 127; /* x = man * 2^(ue - 23), man in [2^23, 2^24) */
    if (ue & 1) { man <<= 1; ue -= 1; }
    /* sqrt(x) = sqrt(man * 2^23) * 2^(ue/2 - 23); the integer root q of N = man << 23 (48 bits, the
     * top 32 in m, the rest zero) has 24 bits: digit by digit, r = N' - q^2 <= 2q < 2^25 for the
     * bits N' of N taken so far, so r << 2 stays in 32 bits (checked equal to a 64-bit root for every
     * man) */
    uint32_t m = man << 7, q = 0, r = 0;
    for (int i = 0; i < 24; i++) {
        r = (r << 2) | (m >> 30);
        m <<= 2;
        uint32_t t = (q << 2) | 1u; /* (2q + 1)^2 - (2q)^2 */
        q <<= 1;
        if (r >= t) { r -= t; q |= 1u; }
    }
    if (r > q) q++; /* remainder > root: round up (ties cannot happen) */
    v.u = (uint32_t)((ue / 2 + 127) << 23) + (q - 0x800000u);
    return v.f;
#endif
}

/* TW_PIN(v): v's value hidden from the optimizer (an empty asm that may change it, in a float
 * register), so that gcc keeps a loop's constant in a register instead of rebuilding it in the loop
 * (vmov.f32 #imm after every call-clobbering slow path). No instruction; the same value. */
#if defined(__GNUC__) && defined(__ARM_FP) && defined(__thumb2__)
#define TW_PIN(v) __asm__("" : "+t"(v))
#else
#define TW_PIN(v) ((void)0)
#endif
/* TW_PIN_U32: the same for an integer, where an add takes a shifted operand (Thumb-2): exp's
 * 2^k as bias + (k << 23) in one instruction, bias = 127 << 23 in a register; elsewhere
 * (k + 127) << 23, the same bits (mod 2^32), which those ISAs build without the constant. */
#if defined(__GNUC__) && defined(__thumb2__)
#define TW_PIN_U32(v) __asm__("" : "+r"(v))
#define TW_EXP2_BITS(k, bias) (((uint32_t)(k) << 23) + (bias))
#else
#define TW_PIN_U32(v) ((void)0)
#define TW_EXP2_BITS(k, bias) ((void)(bias), (uint32_t)((k) + 127) << 23)
#endif

#define LOG2E 0x1.715476p+0f
#define LN2_HI 0x1.62e3p-1f  /* 17 significant bits: k * LN2_HI is exact */
#define LN2_LO 0x1.2fefa2p-17f

/* exp(x) = 2^k * exp(r), k = round(x / ln2), r = x - k ln2 (two-constant split),
 * exp(r) by a degree-6 Taylor polynomial (|r| <= 0.35). Inlined into the loops of softmax and
 * swiglu (their constants stay in registers); tw_expf is the same function.
 * expf_poly is its body past the range tests, given h = half_like(t) with t = x * LOG2E: the loops
 * that call it directly know that |x| <= 80 from x's bits (EXP_POLY_ONLY), where neither range test
 * can act, and take h from x's sign bit (t has x's sign: LOG2E > 0, zeros keep their sign). */
static inline __attribute__((always_inline)) float expf_poly(float x, float h, float half, float one,
                                                             uint32_t bias) {
    float t = x * LOG2E;
    int32_t k = (int32_t)(t + h);
    float kf = (float)k;
    float r = (x - kf * LN2_HI) - kf * LN2_LO;
    float p = 0x1.6c16c2p-10f;                 /* 1/720 */
    p = 0x1.111112p-7f + r * p;                /* 1/120 */
    p = 0x1.555556p-5f + r * p;                /* 1/24 */
    p = 0x1.555556p-3f + r * p;                /* 1/6 */
    p = half + r * p;                          /* half 0.5f, one 1.0f, bias 127 << 23 (TW_PIN) */
    p = one + r * p;
    p = one + r * p;
    f32bits scale = {.u = TW_EXP2_BITS(k, bias)};
    return p * scale.f;
}

static inline __attribute__((always_inline)) float expf_inline(float x) {
    if (x < -80.0f) return 0.0f;               /* keeps every result normal */
    if (x > 88.0f) { f32bits inf = {.u = 0x7F800000u}; return inf.f; }
    return expf_poly(x, half_like(x * LOG2E), 0.5f, 1.0f, 127u << 23);
}

/* |x| <= 80 from x's bits u (for every non-nan float |a| <= |b| exactly when a's magnitude bits are
 * at most b's): then x >= -80 and x <= 88, the range tests of expf_inline cannot act. */
#define EXP_POLY_ONLY(u) ((uint32_t)((u) << 1) <= (0x42A00000u << 1)) /* 80.0f */

__attribute__((noinline)) float tw_expf(float x) { return expf_inline(x); }


#define TWO_OVER_PI 0x1.45f306p-1f
#define PIO2_HI 0x1.92p+0f     /* pi/2 in three parts; n * PIO2_HI and n * PIO2_MID exact */
#define PIO2_MID 0x1.fb4p-12f  /* for |n| < 4096 */
#define PIO2_LO 0x1.4442d2p-24f

/* sin and cos: n = round(x * 2/pi), r = x - n pi/2 (Cody-Waite, three parts),
 * Taylor polynomials on |r| <= pi/4, quadrant n & 3 picks and signs them.
 * Accurate for |x| < 6000 (n * PIO2_HI exact); defined while n fits an int32. */
void tw_sincosf(float x, float *s, float *c) {
    float t = x * TWO_OVER_PI;
    int32_t n = (int32_t)(t + half_like(t));
    float nf = (float)n;
    float r = ((x - nf * PIO2_HI) - nf * PIO2_MID) - nf * PIO2_LO;
    float r2 = r * r;
    float ps = 0x1.71de3ap-19f;                /* 1/9! */
    ps = -0x1.a01a02p-13f + r2 * ps;           /* -1/7! */
    ps = 0x1.111112p-7f + r2 * ps;             /* 1/5! */
    ps = -0x1.555556p-3f + r2 * ps;            /* -1/3! */
    float sr = r + (r * r2) * ps;
    float pc = 0x1.a01a02p-16f;                /* 1/8! */
    pc = -0x1.6c16c2p-10f + r2 * pc;           /* -1/6! */
    pc = 0x1.555556p-5f + r2 * pc;             /* 1/4! */
    pc = -0.5f + r2 * pc;
    float cr = 1.0f + r2 * pc;
    switch ((uint32_t)n & 3u) {
    case 0: *s = sr; *c = cr; break;
    case 1: *s = cr; *c = -sr; break;
    case 2: *s = -sr; *c = -cr; break;
    default: *s = -cr; *c = sr; break;
    }
}

/* ------------------------------------------------------- vector kernels */

/* (both loops four elements a turn, then the rest: the same operations in the same order; out may
 * be x) */
void rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps) {
    float ss = 0.0f;
    uint32_t j = 0;
    for (; j + 4 <= n; j += 4) {
        float x0 = x[j], x1 = x[j + 1], x2 = x[j + 2], x3 = x[j + 3];
        ss = ss + x0 * x0;
        ss = ss + x1 * x1;
        ss = ss + x2 * x2;
        ss = ss + x3 * x3;
    }
    for (; j < n; j++) ss = ss + x[j] * x[j];
    ss = ss / (float)n;
    ss = ss + eps;
    float inv = 1.0f / tw_sqrtf(ss);
    for (j = 0; j + 4 <= n; j += 4) {
        float y0 = (x[j] * inv) * w[j], y1 = (x[j + 1] * inv) * w[j + 1];
        float y2 = (x[j + 2] * inv) * w[j + 2], y3 = (x[j + 3] * inv) * w[j + 3];
        out[j] = y0;
        out[j + 1] = y1;
        out[j + 2] = y2;
        out[j + 3] = y3;
    }
    for (; j < n; j++) out[j] = (x[j] * inv) * w[j];
}

/* x[i] = exp(x[i] - max) in place; returns their sum, sequential from 0.0f. max is the maximum of
 * x by softmax's rule (x[0], then x[i] > max), so where the polynomial alone runs (d = x[i] - max
 * not nan, |d| <= 80) d <= 0: max is then no nan and at least every non-nan x[i]. There
 * half_like(d * LOG2E) is -0.5f, but for d = +0 (x[i] = max), where it is 0.5f and k is 0 either
 * way ((int)(0 + 0.5f) = (int)(0 - 0.5f) = 0): the constant -0.5f gives every bit the same. */
static inline __attribute__((always_inline)) float exp_sub_sum(float *x, uint32_t n, float max) {
    float sum = 0.0f, minus_half = -0.5f, half = 0.5f, one = 1.0f;
    TW_PIN(minus_half);
    TW_PIN(half);
    TW_PIN(one);
    uint32_t bias = 127u << 23;
    TW_PIN_U32(bias);
    for (uint32_t i = 0; i < n; i++) {
        f32bits d = {x[i] - max};
        float e = __builtin_expect(EXP_POLY_ONLY(d.u), 1) ? expf_poly(d.f, minus_half, half, one, bias) : tw_expf(d.f);
        x[i] = e;
        sum = sum + e;
    }
    return sum;
}

/* In place: max-subtract, exp, sequential sum, multiply by 1/sum. */
void softmax(float *x, uint32_t n) {
    float max = x[0];
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    float inv = 1.0f / exp_sub_sum(x, n, max);
    for (uint32_t i = 0; i < n; i++) x[i] = x[i] * inv;
}

void vec_add(float *x, const float *y, uint32_t n) {
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float s0 = x[i] + y[i], s1 = x[i + 1] + y[i + 1], s2 = x[i + 2] + y[i + 2], s3 = x[i + 3] + y[i + 3];
        x[i] = s0;
        x[i + 1] = s1;
        x[i + 2] = s2;
        x[i + 3] = s3;
    }
    for (; i < n; i++) x[i] = x[i] + y[i];
}

/* a[i] = silu(a[i]) * b[i], silu(v) = v / (1 + exp(-v)). exp's polynomial alone where |v| <= 80
 * (EXP_POLY_ONLY on v's bits), its half_like(-v) from v's sign bit flipped; two elements a turn. */
void swiglu(float *a, const float *b, uint32_t n) {
    float half = 0.5f, one = 1.0f;
    TW_PIN(half);
    TW_PIN(one);
    uint32_t bias = 127u << 23;
    TW_PIN_U32(bias);
#pragma GCC unroll 2
    for (uint32_t i = 0; i < n; i++) {
        f32bits v = {a[i]};
        float e;
        if (__builtin_expect(EXP_POLY_ONLY(v.u), 1)) {
            f32bits h = {.u = (v.u & 0x80000000u) ^ 0xBF000000u}; /* -v's sign | 0.5f */
            e = expf_poly(-v.f, h.f, half, one, bias);
        } else {
            e = tw_expf(-v.f);
        }
        a[i] = (v.f / (one + e)) * b[i];
    }
}

/* Stored code c of element j of a packed row (8-bit symmetric codes are signed). */
static int32_t code_at(const tw_tensor *t, const uint8_t *row, uint32_t j) {
    switch (t->bits) {
    case 8: return t->scheme == TW_SCHEME_ASYMMETRIC ? (int32_t)row[j] : (int32_t)(int8_t)row[j];
    case 4: return (row[j / 2] >> ((j & 1u) * 4u)) & 15;
    case 2: return (row[j / 4] >> ((j & 3u) * 2u)) & 3;
    default: { /* 3 */
        const uint8_t *p = row + j / 8 * 3;
        uint32_t w = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
        return (int32_t)((w >> ((j & 7u) * 3u)) & 7u);
    }
    }
}

/* One row of a quantized matrix, dequantized: (float)(c - z) * scale (group by group: z and the scale
 * read once a group, no j / group_size per element). */
void embed_row(float *out, const tw_tensor *emb, uint32_t row) {
    uint32_t g = emb->group_size, ng = emb->padded_cols / g, cols = emb->cols;
    const float *sc = emb->scales + row * ng;
    const uint8_t *q = (const uint8_t *)emb->data + row * (emb->padded_cols / 8 * emb->bits);
    for (uint32_t gi = 0, j = 0; j < cols; gi++) {
        int32_t z = tw_group_zero(emb, row, gi);
        float scale = sc[gi];
        for (uint32_t end = cols - j < g ? cols : j + g; j < end; j++)
            out[j] = (float)(code_at(emb, q, j) - z) * scale;
    }
}

/* cos/sin of pos * freq[i] for each rotation pair i. */
void rope_table(float *cos_t, float *sin_t, const float *freq, uint32_t n_pairs, uint32_t pos) {
    float p = (float)pos;
    for (uint32_t i = 0; i < n_pairs; i++) tw_sincosf(p * freq[i], &sin_t[i], &cos_t[i]);
}

/* Rotate pairs (2i, 2i+1) of every head of v (n values, heads of head_size): pair (j, j + 1) takes
 * i = (j % head_size) / 2, here head by head (no division per pair; a partial last head, which the
 * runtime never passes, the same way). */
static inline __attribute__((always_inline)) void rope_pairs(float *v, uint32_t n, const float *cos_t,
                                                             const float *sin_t) {
    for (uint32_t i = 0; 2 * i < n; i++, v += 2) { /* j = 2i */
        float c = cos_t[i], s = sin_t[i], v0 = v[0], v1 = v[1];
        v[0] = v0 * c - v1 * s;
        v[1] = v0 * s + v1 * c;
    }
}

void rope_rotate(float *v, uint32_t n, uint32_t head_size, const float *cos_t, const float *sin_t) {
    uint32_t full = n / head_size * head_size;
    for (uint32_t h = 0; h < full; h += head_size) rope_pairs(v + h, head_size, cos_t, sin_t);
    if (full < n) rope_pairs(v + full, n - full, cos_t, sin_t);
}

/* Terms i .. i + w - 1 of every position's score (w = 8 or 4, constant once inlined; q's w values in
 * registers): score = (first ? 0.0f : att[t]) + q[0] * k_t[0] + ... + q[w-1] * k_t[w-1] in that
 * order, times scale when last. Returns, when last, the maximum of the scores by softmax's rule
 * (max = att[0], then att[t] > max). One loop per (w, first, last): no test per position. */
static inline __attribute__((always_inline)) float score_terms(const float *qr, const float *k, uint32_t w,
                                                               float score) {
#pragma GCC unroll 8
    for (uint32_t j = 0; j < w; j++) score = score + qr[j] * k[j];
    return score;
}

static inline __attribute__((always_inline)) float score_pass(float *att, const float *q, const float *k,
                                                              uint32_t kv_stride, uint32_t n_pos, uint32_t w,
                                                              int first, int last, float scale) {
    float qr[8];
#pragma GCC unroll 8
    for (uint32_t j = 0; j < w; j++) qr[j] = q[j];
    if (!last) {
        for (uint32_t t = 0; t < n_pos; t++, k += kv_stride)
            att[t] = score_terms(qr, k, w, first ? 0.0f : att[t]);
        return 0.0f;
    }
    /* position 0 (n_pos >= 1) by a rolled loop over q itself: the same operations, less code */
    float max = first ? 0.0f : att[0];
#pragma GCC unroll 1
    for (uint32_t j = 0; j < w; j++) max = max + q[j] * k[j];
    max = max * scale;
    att[0] = max;
    k += kv_stride;
    for (uint32_t t = 1; t < n_pos; t++, k += kv_stride) {
        float score = score_terms(qr, k, w, first ? 0.0f : att[t]) * scale;
        if (score > max) max = score;
        att[t] = score;
    }
    return max;
}

/* The score pass of w (8 or 4) terms from term i: the copy for i's place (first, last). */
static inline __attribute__((always_inline)) float score_block(float *att, const float *q, const float *k,
                                                               uint32_t kv_stride, uint32_t n_pos, uint32_t w,
                                                               uint32_t i, uint32_t head_size, float scale) {
    if (i + w == head_size)
        return i == 0 ? score_pass(att, q, k, kv_stride, n_pos, w, 1, 1, scale)
                      : score_pass(att, q + i, k + i, kv_stride, n_pos, w, 0, 1, scale);
    if (i == 0) score_pass(att, q, k, kv_stride, n_pos, w, 1, 0, scale);
    else score_pass(att, q + i, k + i, kv_stride, n_pos, w, 0, 0, scale);
    return 0.0f;
}

/* out[i .. i + w - 1] = sum over t of (att[t] * inv) * v_t[i], each from 0.0f in t order (w = 8 or 4
 * outputs in registers, constant once inlined): softmax's last multiply (by inv = 1 / sum) done
 * here, the same product per position as softmax would have stored. */
static inline __attribute__((always_inline)) void weighted_sum(float *out, const float *att, const float *v,
                                                               uint32_t kv_stride, uint32_t n_pos, uint32_t w,
                                                               float inv) {
    float o[8];
    #pragma GCC unroll 8
    for (uint32_t j = 0; j < w; j++) o[j] = 0.0f;
    for (uint32_t t = 0; t < n_pos; t++, v += kv_stride) {
        float a = att[t] * inv;
        #pragma GCC unroll 8
        for (uint32_t j = 0; j < w; j++) o[j] = o[j] + a * v[j];
    }
    #pragma GCC unroll 8
    for (uint32_t j = 0; j < w; j++) out[j] = o[j];
}

/* One attention head over positions 0..n_pos-1. key_cache/value_cache point at this
 * head's first element at position 0; consecutive positions are kv_stride floats apart.
 * The same operations as scores, softmax(att, n_pos), then out[i] = sum over t of att[t] * v_t[i]:
 * the scores eight or four terms at a time over every position, softmax's max taken in the last
 * score pass and its normalization (att[t] * inv) in the weighted sum, which sums eight or four
 * outputs at a time. att holds exp(score - max) on return. */
void attention_head(float *out, float *att, const float *q, const float *key_cache,
                    const float *value_cache, uint32_t kv_stride, uint32_t n_pos,
                    uint32_t head_size, float scale) {
    /* att[t] = (sum over i of q[i] * k_t[i], from 0.0f in i order) * scale */
    float max = 0.0f;
    uint32_t i = 0;
    for (; i + 8 <= head_size; i += 8) max = score_block(att, q, key_cache, kv_stride, n_pos, 8, i, head_size, scale);
    if (i + 4 <= head_size) {
        max = score_block(att, q, key_cache, kv_stride, n_pos, 4, i, head_size, scale);
        i += 4;
    }
    if (i < head_size) { /* the terms left over by four (1 to 3) */
        const float *k = key_cache;
        for (uint32_t t = 0; t < n_pos; t++, k += kv_stride) {
            float score = i ? att[t] : 0.0f;
            for (uint32_t j = i; j < head_size; j++) score = score + q[j] * k[j];
            score = score * scale;
            if (t == 0 || score > max) max = score; /* rare: head sizes not a multiple of four */
            att[t] = score;
        }
    }
    float inv = 1.0f / exp_sub_sum(att, n_pos, max);
    for (i = 0; i + 8 <= head_size; i += 8) weighted_sum(out + i, att, value_cache + i, kv_stride, n_pos, 8, inv);
    if (i + 4 <= head_size) {
        weighted_sum(out + i, att, value_cache + i, kv_stride, n_pos, 4, inv);
        i += 4;
    }
    for (; i < head_size; i++) {
        float o = 0.0f;
        for (uint32_t t = 0; t < n_pos; t++) o = o + (att[t] * inv) * value_cache[t * kv_stride + i];
        out[i] = o;
    }
}

/* Two heads of eight that share their keys and values (grouped-query attention): attention_head's
 * operations for each, every key and value loaded once for both. Its 32 values in registers (two q,
 * two sums) want float registers: only with hardware floats (an FPU; the host's SSE, where the native
 * tests run it). Soft-float builds (their floats in integer registers, around helper calls) would
 * spill them, and take the heads one by one. */
#if (defined(__ARM_FP) && (__ARM_FP & 4)) || defined(__riscv_flen) || defined(__x86_64__) || defined(__aarch64__)
#define TW_ATTENTION_PAIRS 1
#else
#define TW_ATTENTION_PAIRS 0
#endif
static void attention_pair8(float *out, float *att0, float *att1, const float *q, const float *k,
                            const float *v, uint32_t kv_stride, uint32_t n_pos, float scale) {
    float a[8], b[8];
#pragma GCC unroll 8
    for (uint32_t j = 0; j < 8; j++) {
        a[j] = q[j];
        b[j] = q[8 + j];
    }
    /* position 0 (n_pos >= 1) by rolled loops over q itself: the same operations, less code */
    float max0 = 0.0f, max1 = 0.0f;
    for (uint32_t j = 0; j < 8; j++) max0 = max0 + q[j] * k[j];
    for (uint32_t j = 0; j < 8; j++) max1 = max1 + q[8 + j] * k[j];
    max0 = max0 * scale;
    max1 = max1 * scale;
    att0[0] = max0;
    att1[0] = max1;
    const float *kt = k + kv_stride;
    for (uint32_t t = 1; t < n_pos; t++, kt += kv_stride) {
        float s0 = 0.0f, s1 = 0.0f;
#pragma GCC unroll 8
        for (uint32_t j = 0; j < 8; j++) {
            float kj = kt[j];
            s0 = s0 + a[j] * kj;
            s1 = s1 + b[j] * kj;
        }
        s0 = s0 * scale;
        s1 = s1 * scale;
        if (s0 > max0) max0 = s0;
        if (s1 > max1) max1 = s1;
        att0[t] = s0;
        att1[t] = s1;
    }
    float inv0 = 1.0f / exp_sub_sum(att0, n_pos, max0);
    float inv1 = 1.0f / exp_sub_sum(att1, n_pos, max1);
    float o0[8], o1[8];
#pragma GCC unroll 8
    for (uint32_t j = 0; j < 8; j++) o0[j] = o1[j] = 0.0f;
    for (uint32_t t = 0; t < n_pos; t++, v += kv_stride) {
        float p0 = att0[t] * inv0, p1 = att1[t] * inv1;
#pragma GCC unroll 8
        for (uint32_t j = 0; j < 8; j++) {
            float vj = v[j];
            o0[j] = o0[j] + p0 * vj;
            o1[j] = o1[j] + p1 * vj;
        }
    }
#pragma GCC unroll 8
    for (uint32_t j = 0; j < 8; j++) {
        out[j] = o0[j];
        out[8 + j] = o1[j];
    }
}

void attention_heads(float *out, float *att, uint32_t att_stride, const float *q, const float *key_cache,
                     const float *value_cache, uint32_t kv_stride, uint32_t n_pos, uint32_t head_size,
                     float scale, uint32_t n_heads) {
    uint32_t h = 0;
    if (TW_ATTENTION_PAIRS && head_size == 8)
        for (; h + 2 <= n_heads; h += 2)
            attention_pair8(out + h * 8, att + h * att_stride, att + (h + 1) * att_stride, q + h * 8, key_cache,
                            value_cache, kv_stride, n_pos, scale);
    for (; h < n_heads; h++)
        attention_head(out + h * head_size, att + h * att_stride, q + h * head_size, key_cache, value_cache,
                       kv_stride, n_pos, head_size, scale);
}

void attention_head_q8(float *out, float *att, const float *q, const int8_t *key_q,
                       const float *key_scale, const int8_t *value_q, const float *value_scale,
                       uint32_t kv_stride, uint32_t scale_stride, uint32_t n_pos, uint32_t head_size,
                       float scale) {
    for (uint32_t t = 0; t < n_pos; t++) {
        const int8_t *k = key_q + t * kv_stride;
        float score = 0.0f;
        for (uint32_t i = 0; i < head_size; i++) score = score + q[i] * (float)k[i];
        att[t] = (score * key_scale[t * scale_stride]) * scale;
    }
    softmax(att, n_pos);
    for (uint32_t i = 0; i < head_size; i++) out[i] = 0.0f;
    for (uint32_t t = 0; t < n_pos; t++) {
        const int8_t *v = value_q + t * kv_stride;
        float a = att[t] * value_scale[t * scale_stride];
        for (uint32_t i = 0; i < head_size; i++) out[i] = out[i] + a * (float)v[i];
    }
}

/* ------------------------------------------------ activation quantization */

/* x (n values) -> int8 per group: scale = maxabs / 127, q = round(x * (1 / scale)) in [-127, 127]
 * where scale is normal (llama.cpp's Q8_0 rule: one divide per group, not per element), else
 * round(x / scale) clamped (q = 0 when scale is 0; 1 / scale of a subnormal may overflow).
 * The padding up to a multiple of group_size is zero. */
void quantize_act(int8_t *xq, float *xs, const float *x, uint32_t n, uint32_t group_size) {
    uint32_t ng = (n + group_size - 1) / group_size;
    for (uint32_t g = 0; g < ng; g++) {
        uint32_t lo = g * group_size, hi = lo + group_size < n ? lo + group_size : n;
        /* max |x| on the bit patterns: for finite floats |a| < |b| exactly when their magnitude
         * bits compare so as unsigned integers (the same maximum, without float compares).
         * This loop and the normal-scale one below are unrolled by gcc's RTL unroller: it runs after
         * the SLP pass, so the codes stay four byte stores (a hand-unrolled loop's stores get packed
         * into one word with bit-field inserts: more instructions). */
        uint32_t maxbits = 0;
#pragma GCC unroll 4
        for (uint32_t j = lo; j < hi; j++) {
            f32bits a = {x[j]};
            if ((a.u & 0x7FFFFFFFu) > maxbits) maxbits = a.u & 0x7FFFFFFFu;
        }
        f32bits maxabs = {.u = maxbits};
        float scale = maxabs.f / 127.0f;
        xs[g] = scale;
        uint32_t j = lo;
        if (scale >= 0x1p-126f) {
            /* scale and inv are each within half an ulp, so |v| <= 127 (1 + 2^-24)^3 < 127.5 and
             * |q| <= 127: no clamp needed */
            float inv = 1.0f / scale;
#pragma GCC unroll 4
            for (; j < hi; j++) {
                float v = x[j] * inv;
                xq[j] = (int8_t)(int32_t)(v + half_like(v));
            }
        } else if (scale != 0.0f) {
            for (; j < hi; j++) {
                float v = x[j] / scale; /* a subnormal scale loses bits: |v| may pass 127 */
                int32_t q = (int32_t)(v + half_like(v));
                xq[j] = (int8_t)(q > 127 ? 127 : (q < -127 ? -127 : q));
            }
        }
        for (; j < lo + group_size; j++) xq[j] = 0;
    }
}

/* ------------------------------------------------------------- sampling */

/* xorshift32 (Marsaglia): x ^= x << 13; x ^= x >> 17; x ^= x << 5. */
uint32_t rng_next(uint32_t *state) {
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

float rng_float(uint32_t *state) {
    return (float)(rng_next(state) >> 8) * 0x1p-24f;
}

uint32_t argmax(const float *x, uint32_t n) {
    uint32_t best = 0;
    float top = x[0]; /* x[best] */
#pragma GCC unroll 4
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > top) { best = i; top = x[i]; }
    return best;
}

/* Total order of the nucleus sort: higher probability first, lower index on ties. */
static int before(const tw_probindex *a, const tw_probindex *b) {
    return a->prob > b->prob || (a->prob == b->prob && a->index < b->index);
}

static void sift_down(tw_probindex *h, uint32_t root, uint32_t n) {
    for (;;) {
        uint32_t child = 2 * root + 1;
        if (child >= n) return;
        /* max-heap on "after": the root is the element that sorts last */
        if (child + 1 < n && before(&h[child], &h[child + 1])) child++;
        if (!before(&h[root], &h[child])) return;
        tw_probindex t = h[root];
        h[root] = h[child];
        h[child] = t;
        root = child;
    }
}

static void heap_sort(tw_probindex *a, uint32_t n) {
    for (uint32_t i = n / 2; i-- > 0;) sift_down(a, i, n);
    for (uint32_t end = n; end > 1; end--) {
        tw_probindex t = a[0];
        a[0] = a[end - 1];
        a[end - 1] = t;
        sift_down(a, 0, end - 1);
    }
}

/* temperature 0: argmax. Otherwise p = softmax(logits / temperature); r = rng_float();
 * without top-p pick the first i with r < cumsum(p)[i]; with 0 < topp < 1 keep the tokens with
 * p >= (1 - topp) / (n - 1), sort them, cut after the first prefix whose sum exceeds topp and
 * pick the first i of the prefix with r * prefix_sum < cumsum. */
uint32_t sample_logits(const float *logits, uint32_t n, float temperature, float topp,
                       uint32_t *rng, float *probs, tw_probindex *scratch) {
    if (temperature == 0.0f || n == 1) return argmax(logits, n);
    for (uint32_t i = 0; i < n; i++) probs[i] = logits[i] / temperature;
    softmax(probs, n);
    float r = rng_float(rng);
    if (!(topp > 0.0f && topp < 1.0f)) {
        float cdf = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            cdf = cdf + probs[i];
            if (r < cdf) return i;
        }
        return n - 1;
    }
    float cutoff = (1.0f - topp) / (float)(n - 1);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (probs[i] >= cutoff) {
            scratch[m].prob = probs[i];
            scratch[m].index = (int32_t)i;
            m++;
        }
    }
    if (m == 0) return argmax(probs, n);
    heap_sort(scratch, m);
    float cum = 0.0f;
    uint32_t last = m - 1;
    for (uint32_t i = 0; i < m; i++) {
        cum = cum + scratch[i].prob;
        if (cum > topp) { last = i; break; }
    }
    float rr = r * cum;
    float cdf = 0.0f;
    for (uint32_t i = 0; i <= last; i++) {
        cdf = cdf + scratch[i].prob;
        if (rr < cdf) return (uint32_t)scratch[i].index;
    }
    return (uint32_t)scratch[last].index;
}
