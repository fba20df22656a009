/* Tiny Llama-style model runtime: image validation, forward pass, sampling.
 *
 * The model image (docs/image-format.md) is read IN PLACE from a fixed address. All
 * run-state buffers are carved from one caller-provided arena in model_open(); the
 * runtime never allocates afterwards. Freestanding: <stdint.h>/<stddef.h> only; it never
 * names a board. (gcc may emit memset/memcpy calls; the board layer provides them.)
 *
 * NUMERIC RULES -- the host reference (twin/model/reference.py, QuantReference) mirrors this code
 * bit for bit on every target (FPU single precision or soft-float). Keep them:
 *  1. Every float operation is an IEEE binary32 basic operation (+ - * /, int<->float
 *     conversion, comparison) in round-to-nearest-even. No double anywhere
 *     (-Wdouble-promotion), build with -ffp-contract=off (no fused multiply-add), never
 *     -ffast-math. No libm: tw_sqrtf (correctly rounded: the FPU's square root instruction, IEEE's
 *     basic operation, else an integer algorithm), tw_expf and tw_sincosf are written with basic
 *     operations only.
 *  2. Sums are sequential, left to right, starting from 0.0f (s = 0; s = s + x[i]).
 *     max is order-free. Integer dot products are exact in int32.
 *  3. float -> int conversion truncates toward zero; rounding to nearest is written
 *     (int)(v + (v >= 0 ? 0.5f : -0.5f)).
 *  4. Sort orders are TOTAL (probability descending, token index ascending on ties), so any
 *     sort algorithm gives the same order.
 *  5. Constants are float literals given exactly (hex floats); the host uses the same bits.
 *
 * Generation loop the application runs (and twin.reference.generate mirrors):
 *     model_open(...); rng_seed(&rng, seed); pos = 0;
 *     for (i = 0; i < n_prompt - 1; i++) model_forward(m, prompt[i], pos++);
 *     token = prompt[n_prompt - 1];
 *     for (k = 0; k < n_tokens; k++) {
 *         logits = model_forward(m, token, pos++);
 *         token = model_sample(m, logits, temperature, topp, &rng);   emit(token);
 *     }
 *   with 1 <= n_prompt and n_prompt + n_tokens <= seq_len.
 */
#ifndef TWIN_MODEL_H
#define TWIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* model_open() result codes (shared with the host protocol, docs/protocol.md). */
enum {
    TW_OK = 0,
    TW_E_BAD_MAGIC = 1,
    TW_E_VERSION = 2,
    TW_E_CRC = 3,
    TW_E_TOO_LARGE = 4,
    TW_E_NO_RAM = 5,
    TW_E_ARCH = 6,
    TW_E_QUANT = 7,
    TW_E_CORRUPT = 8,
};

typedef struct {
    uint32_t arch, dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, flags;
    float norm_eps;
    char name[17]; /* NUL-terminated copy of the 16-byte header field */
} twin_config;

typedef struct {
    tw_tensor attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3;
} tw_layer;

/* Run-state buffers, all inside the arena. */
typedef struct {
    float *x, *xb, *xb2, *q, *hb, *hb2; /* activations */
    float *att;                         /* n_heads * seq_len attention scores */
    float *key_cache, *value_cache;     /* n_layers * seq_len * kv_dim each (f32 KV cache) */
    /* int8 KV cache (flags bit 1) instead: per (layer, position, KV head) head_size int8 levels
     * and one float32 scale; each cache is one buffer, scales first (see layout()). */
    int8_t *key_q, *value_q;            /* n_layers * seq_len * kv_dim each */
    float *key_scale, *value_scale;     /* n_layers * seq_len * n_kv_heads each */
    float *rope_cos, *rope_sin;         /* head_size / 2 each */
    int8_t *xq;                         /* quantized activations (padded length) */
    float *xs;                          /* their per-group scales */
    uint32_t xq_cols, xq_group;         /* the shape xq was quantized for (0: none yet) */
    float *logits;                      /* vocab_size */
    float *probs;                       /* vocab_size, sampling */
    tw_probindex *probindex;            /* vocab_size, nucleus sampling */
} tw_runstate;

typedef struct {
    twin_config cfg;
    const uint8_t *image;
    uint32_t image_size, image_crc;
    tw_tensor tok_emb, classifier, final_norm, rope_freq;
    tw_layer *layers; /* n_layers entries, inside the arena */
    tw_runstate s;
    float att_scale; /* 1 / sqrt(head_size) */
    uint32_t arena_needed, arena_used;
} twin_model;

/* Validates the image, in this order: magic, version, size vs partition, CRC, tensor table,
 * architecture, quantization, RAM. Returns TW_OK or the first failing TW_E_* code.
 * image must be 4-byte aligned. On TW_OK and TW_E_NO_RAM, model_arena_needed() is valid. */
int model_open(twin_model *m, const uint8_t *image, uint32_t partition_size, uint8_t *arena,
               uint32_t arena_size);

/* Logits (float32[vocab_size], inside the arena) for `token` at position `pos`; NULL if the
 * token or the position is out of range. Positions must be fed in order 0, 1, 2, ... */
const float *model_forward(twin_model *m, int token, int pos);

/* Next token from logits: temperature 0 = greedy argmax (first index on ties), otherwise
 * softmax(logits / temperature) with nucleus (top-p) filtering when 0 < topp < 1.
 * Uses the model's arena for scratch (probabilities and the top-p sort). */
int model_sample(twin_model *m, const float *logits, float temperature, float topp, uint32_t *rng);

/* xorshift32 state from a seed; seed 0 is replaced by TW_RNG_SEED0. */
#define TW_RNG_SEED0 0x9E3779B9u
void rng_seed(uint32_t *state, uint32_t seed);

uint32_t model_arena_needed(const twin_model *m);
uint32_t model_arena_used(const twin_model *m);
uint32_t model_image_crc(const twin_model *m);
uint32_t model_image_size(const twin_model *m);
const char *model_name(const twin_model *m);
uint32_t model_vocab_size(const twin_model *m);
uint32_t model_seq_len(const twin_model *m);

#endif
