/* Model runtime: validate the image in place, carve the arena, run the forward pass. */
#include "model.h"

#include "crc32.h"
#include "image.h"

/* ----------------------------------------------------------- image access */

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float rdf32(const uint8_t *p) {
    union { uint32_t u; float f; } v = {rd32(p)};
    return v.f;
}

static int is_matrix(uint32_t kind) {
    return kind != TW_K_ATTN_NORM && kind != TW_K_FFN_NORM && kind != TW_K_FINAL_NORM &&
           kind != TW_K_ROPE_FREQ;
}

static int is_per_layer(uint32_t kind) {
    return kind >= TW_K_ATTN_NORM && kind <= TW_K_W3;
}

/* Quantized encodings this runtime reads: 2/3/4/8-bit codes, symmetric or asymmetric, in
 * groups of 32, 64 or 128 along the input dimension. */
static int quant_supported(uint32_t bits, uint32_t scheme, uint32_t group) {
    return (bits == 8 || bits == 4 || bits == 3 || bits == 2) &&
           (scheme == TW_SCHEME_SYMMETRIC || scheme == TW_SCHEME_ASYMMETRIC) &&
           (group == 32 || group == 64 || group == 128);
}

/* Logical shape a tensor kind must have, from the header. */
static void expected_shape(const twin_config *c, uint32_t kind, uint32_t *rows, uint32_t *cols) {
    uint32_t kv_dim = c->dim / c->n_heads * c->n_kv_heads;
    *rows = 1;
    *cols = c->dim;
    switch (kind) {
    case TW_K_TOK_EMB: case TW_K_CLASSIFIER: *rows = c->vocab_size; break;
    case TW_K_WQ: case TW_K_WO: *rows = c->dim; break;
    case TW_K_WK: case TW_K_WV: *rows = kv_dim; break;
    case TW_K_W1: case TW_K_W3: *rows = c->hidden_dim; break;
    case TW_K_W2: *rows = c->dim; *cols = c->hidden_dim; break;
    case TW_K_ROPE_FREQ: *cols = c->dim / c->n_heads / 2; break;
    default: break; /* norms: 1 x dim */
    }
}

/* Expected data and scale sizes for a known encoding; 0 if the encoding is unknown. */
static int expected_sizes(uint32_t bits, uint32_t scheme, uint32_t group, uint32_t rows,
                          uint32_t cols, uint32_t *data, uint32_t *scales) {
    if (bits == 32) {
        *data = rows * cols * 4u;
        *scales = 0;
        return scheme == 0;
    }
    if (!quant_supported(bits, scheme, group)) return 0;
    uint32_t padded = (cols + group - 1) / group * group, groups = rows * (padded / group);
    *data = rows * (padded / 8u * bits); /* padded is a multiple of 32 */
    /* float32 scales, then (asymmetric) one uint8 zero point per (row, group) */
    *scales = groups * 4u + (scheme == TW_SCHEME_ASYMMETRIC ? groups : 0u);
    return 1;
}

static int range_ok(uint32_t off, uint32_t size, uint32_t total) {
    return (off & 3u) == 0 && off <= total && size <= total - off;
}

static int config_ok(const twin_config *c) {
    if (c->dim == 0 || c->dim > 8192 || c->hidden_dim == 0 || c->hidden_dim > 32768) return 0;
    if (c->n_layers == 0 || c->n_layers > 256 || c->vocab_size == 0 || c->vocab_size > 65536) return 0;
    if (c->seq_len == 0 || c->seq_len > 16384) return 0;
    if (c->n_heads == 0 || c->dim % c->n_heads || (c->dim / c->n_heads) % 2) return 0;
    if (c->n_kv_heads == 0 || c->n_heads % c->n_kv_heads) return 0;
    if (c->flags & ~(TW_FLAG_SHARED_CLASSIFIER | TW_FLAG_KV_INT8)) return 0;
    return c->norm_eps > 0.0f && c->norm_eps < 1.0f;
}

static void read_config(twin_config *c, const uint8_t *img) {
    c->arch = rd32(img + TW_OFF_ARCH);
    c->dim = rd32(img + TW_OFF_DIM);
    c->hidden_dim = rd32(img + TW_OFF_HIDDEN_DIM);
    c->n_layers = rd32(img + TW_OFF_N_LAYERS);
    c->n_heads = rd32(img + TW_OFF_N_HEADS);
    c->n_kv_heads = rd32(img + TW_OFF_N_KV_HEADS);
    c->vocab_size = rd32(img + TW_OFF_VOCAB_SIZE);
    c->seq_len = rd32(img + TW_OFF_SEQ_LEN);
    c->flags = rd32(img + TW_OFF_FLAGS);
    c->norm_eps = rdf32(img + TW_OFF_NORM_EPS);
    for (int i = 0; i < 16; i++) c->name[i] = (char)img[TW_OFF_NAME + i];
    c->name[16] = 0;
}

/* Tensor table: ranges, shapes, one of each required tensor. Encodings that this reader
 * does not know are left for check_quant(). */
static int check_table(const twin_config *c, const uint8_t *img, uint32_t total) {
    uint32_t header_size = rd16(img + TW_OFF_HEADER_SIZE);
    uint32_t n = rd32(img + TW_OFF_N_TENSORS), esize = rd32(img + TW_OFF_ENTRY_SIZE);
    if (((uintptr_t)img & 3u) || header_size < TW_HEADER_SIZE || (header_size & 3u)) return 0;
    if (total < header_size || !config_ok(c)) return 0;
    if (esize < TW_ENTRY_SIZE || esize > 256u || (esize & 3u) || n > TW_MAX_TENSORS) return 0;
    if (n * esize > total - header_size) return 0;
    uint32_t shared = c->flags & TW_FLAG_SHARED_CLASSIFIER;
    uint32_t n_required = 9u * c->n_layers + 3u + (shared ? 0u : 1u);
    if (n != n_required) return 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = img + header_size + i * esize;
        uint32_t kind = e[TW_E_KIND], layer = rd16(e + TW_E_LAYER), rows, cols, dsz, ssz;
        if (kind >= TW_K_COUNT || (kind == TW_K_CLASSIFIER && shared)) return 0;
        if (is_per_layer(kind) ? layer >= c->n_layers : layer != 0) return 0;
        for (uint32_t j = 0; j < i; j++) { /* duplicates (with the count check: none missing) */
            const uint8_t *o = img + header_size + j * esize;
            if (o[TW_E_KIND] == kind && rd16(o + TW_E_LAYER) == layer) return 0;
        }
        expected_shape(c, kind, &rows, &cols);
        if (rd32(e + TW_E_ROWS) != rows || rd32(e + TW_E_COLS) != cols) return 0;
        uint32_t doff = rd32(e + TW_E_DATA_OFF), dsize = rd32(e + TW_E_DATA_SIZE);
        uint32_t soff = rd32(e + TW_E_SCALE_OFF), ssize = rd32(e + TW_E_SCALE_SIZE);
        if (!range_ok(doff, dsize, total) || !range_ok(soff, ssize, total)) return 0;
        if (doff < header_size + n * esize || (ssize && soff < header_size + n * esize)) return 0;
        if (expected_sizes(e[TW_E_BITS], e[TW_E_SCHEME], rd16(e + TW_E_GROUP), rows, cols, &dsz, &ssz) &&
            (dsize != dsz || ssize != ssz))
            return 0;
    }
    return 1;
}

/* Every matrix a supported quantized encoding (quant_supported); vectors float32, scheme 0. */
static int check_quant(const uint8_t *img) {
    uint32_t header_size = rd16(img + TW_OFF_HEADER_SIZE);
    uint32_t n = rd32(img + TW_OFF_N_TENSORS), esize = rd32(img + TW_OFF_ENTRY_SIZE);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = img + header_size + i * esize;
        uint32_t bits = e[TW_E_BITS], group = rd16(e + TW_E_GROUP), scheme = e[TW_E_SCHEME];
        if (is_matrix(e[TW_E_KIND]) ? !quant_supported(bits, scheme, group)
                                    : (bits != 32 || group != 0 || scheme != 0))
            return 0;
    }
    return 1;
}

static void bind_tensors(twin_model *m, const uint8_t *img) {
    uint32_t header_size = rd16(img + TW_OFF_HEADER_SIZE);
    uint32_t n = rd32(img + TW_OFF_N_TENSORS), esize = rd32(img + TW_OFF_ENTRY_SIZE);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = img + header_size + i * esize;
        tw_tensor t;
        t.bits = e[TW_E_BITS];
        t.scheme = e[TW_E_SCHEME];
        t.group_size = (uint16_t)rd16(e + TW_E_GROUP);
        t.rows = rd32(e + TW_E_ROWS);
        t.cols = rd32(e + TW_E_COLS);
        t.padded_cols = t.bits == 32 ? t.cols : (t.cols + t.group_size - 1) / t.group_size * t.group_size;
        t.data = img + rd32(e + TW_E_DATA_OFF);
        t.scales = t.bits == 32 ? NULL : (const float *)(const void *)(img + rd32(e + TW_E_SCALE_OFF));
        t.zeros = t.scheme == TW_SCHEME_ASYMMETRIC /* after the scales */
                      ? (const uint8_t *)(const void *)(t.scales + t.rows * (t.padded_cols / t.group_size))
                      : NULL;
        tw_layer *l = &m->layers[rd16(e + TW_E_LAYER)];
        switch (e[TW_E_KIND]) {
        case TW_K_TOK_EMB: m->tok_emb = t; break;
        case TW_K_CLASSIFIER: m->classifier = t; break;
        case TW_K_FINAL_NORM: m->final_norm = t; break;
        case TW_K_ROPE_FREQ: m->rope_freq = t; break;
        case TW_K_ATTN_NORM: l->attn_norm = t; break;
        case TW_K_WQ: l->wq = t; break;
        case TW_K_WK: l->wk = t; break;
        case TW_K_WV: l->wv = t; break;
        case TW_K_WO: l->wo = t; break;
        case TW_K_FFN_NORM: l->ffn_norm = t; break;
        case TW_K_W1: l->w1 = t; break;
        case TW_K_W2: l->w2 = t; break;
        default: l->w3 = t; break;
        }
    }
    if (m->cfg.flags & TW_FLAG_SHARED_CLASSIFIER) m->classifier = m->tok_emb;
}

/* -------------------------------------------------------------- the arena */

/* Takes `bytes` (rounded up to 8) at *cursor. Run with cursor 0 to measure the arena. */
static void *take(uint64_t *cursor, uint64_t bytes) {
    void *p = (void *)(uintptr_t)*cursor;
    *cursor += (bytes + 7u) & ~(uint64_t)7u;
    return p;
}

/* Largest padded input length and group count over all matrices (quantized activations). */
static void act_sizes(const uint8_t *img, uint32_t *max_padded, uint32_t *max_groups) {
    uint32_t header_size = rd16(img + TW_OFF_HEADER_SIZE);
    uint32_t n = rd32(img + TW_OFF_N_TENSORS), esize = rd32(img + TW_OFF_ENTRY_SIZE);
    *max_padded = *max_groups = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = img + header_size + i * esize;
        if (!is_matrix(e[TW_E_KIND])) continue;
        uint32_t g = rd16(e + TW_E_GROUP), padded = (rd32(e + TW_E_COLS) + g - 1) / g * g;
        if (padded > *max_padded) *max_padded = padded;
        if (padded / g > *max_groups) *max_groups = padded / g;
    }
}

static uint64_t layout(twin_model *m, uint64_t base, uint32_t max_padded, uint32_t max_groups) {
    const twin_config *c = &m->cfg;
    uint64_t cur = base, kv_dim = c->dim / c->n_heads * c->n_kv_heads;
    uint64_t slots = (uint64_t)c->n_layers * c->seq_len; /* (layer, position) pairs */
    int kv_int8 = (c->flags & TW_FLAG_KV_INT8) != 0;
    /* f32: float[slots][kv_dim]. int8: float scales[slots][n_kv_heads], then int8[slots][kv_dim]. */
    uint64_t scale_bytes = slots * c->n_kv_heads * sizeof(float);
    uint64_t cache = kv_int8 ? scale_bytes + slots * kv_dim : slots * kv_dim * sizeof(float);
    tw_runstate *s = &m->s;
    m->layers = take(&cur, (uint64_t)c->n_layers * sizeof(tw_layer));
    s->x = take(&cur, c->dim * sizeof(float));
    s->xb = take(&cur, c->dim * sizeof(float));
    s->xb2 = take(&cur, c->dim * sizeof(float));
    s->q = take(&cur, c->dim * sizeof(float));
    s->hb = take(&cur, c->hidden_dim * sizeof(float));
    s->hb2 = take(&cur, c->hidden_dim * sizeof(float));
    s->att = take(&cur, (uint64_t)c->n_heads * c->seq_len * sizeof(float));
    s->key_cache = take(&cur, cache);
    s->value_cache = take(&cur, cache);
    if (kv_int8) {
        s->key_scale = s->key_cache;
        s->key_q = (int8_t *)(void *)((uint8_t *)(void *)s->key_cache + scale_bytes);
        s->value_scale = s->value_cache;
        s->value_q = (int8_t *)(void *)((uint8_t *)(void *)s->value_cache + scale_bytes);
        s->key_cache = s->value_cache = NULL;
    }
    s->rope_cos = take(&cur, c->dim / c->n_heads / 2 * sizeof(float));
    s->rope_sin = take(&cur, c->dim / c->n_heads / 2 * sizeof(float));
    s->xq = take(&cur, max_padded);
    s->xs = take(&cur, max_groups * sizeof(float));
    s->logits = take(&cur, c->vocab_size * sizeof(float));
    s->probs = take(&cur, c->vocab_size * sizeof(float));
    s->probindex = take(&cur, c->vocab_size * sizeof(tw_probindex));
    return cur - base;
}

/* -------------------------------------------------------------------- open */

int model_open(twin_model *m, const uint8_t *image, uint32_t partition_size, uint8_t *arena,
               uint32_t arena_size) {
    twin_model zero = {0};
    *m = zero;
    if (partition_size < TW_PREAMBLE_SIZE || rd32(image + TW_OFF_MAGIC) != TW_MAGIC)
        return TW_E_BAD_MAGIC;
    if (rd16(image + TW_OFF_VERSION) != TW_VERSION) return TW_E_VERSION;
    uint32_t total = rd32(image + TW_OFF_TOTAL_SIZE);
    if (total > partition_size) return TW_E_TOO_LARGE;
    if (total < TW_HEADER_SIZE) return TW_E_CORRUPT;
    uint32_t crc = crc32_update(0, image + TW_PREAMBLE_SIZE, total - TW_PREAMBLE_SIZE);
    if (crc != rd32(image + TW_OFF_CRC)) return TW_E_CRC;
    read_config(&m->cfg, image);
    if (!check_table(&m->cfg, image, total)) return TW_E_CORRUPT;
    if (m->cfg.arch != TW_ARCH_LLAMA) return TW_E_ARCH;
    if (!check_quant(image)) return TW_E_QUANT;

    uint32_t max_padded, max_groups;
    act_sizes(image, &max_padded, &max_groups);
    uint32_t misalign = (uint32_t)(-(uintptr_t)arena & 7u);
    uint64_t needed = layout(m, 0, max_padded, max_groups) + misalign;
    m->arena_needed = needed > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)needed;
    if (needed > arena_size) return TW_E_NO_RAM;
    m->arena_used = (uint32_t)layout(m, (uintptr_t)arena + misalign, max_padded, max_groups) + misalign;

    m->image = image;
    m->image_size = total;
    m->image_crc = crc;
    bind_tensors(m, image);
    m->att_scale = 1.0f / tw_sqrtf((float)(m->cfg.dim / m->cfg.n_heads));
    return TW_OK;
}

/* ----------------------------------------------------------------- forward */

/* out = W x with x quantized per group (quantize_act). `same_x`: x is the previous call's input,
 * unchanged since, so its quantization is reused when the shape matches (q/k/v share one input,
 * w1/w3 another). Quantizing the same vector twice gives the same bits: reuse is exact. */
static void matmul(twin_model *m, float *out, const float *x, const tw_tensor *w, int same_x) {
    if (!same_x || m->s.xq_cols != w->cols || m->s.xq_group != w->group_size) {
        quantize_act(m->s.xq, m->s.xs, x, w->cols, w->group_size);
        m->s.xq_cols = w->cols;
        m->s.xq_group = w->group_size;
    }
    switch (w->bits) { /* model_open admits only these widths */
    case 8: matvec_q8(out, m->s.xq, m->s.xs, w); break;
    case 4: matvec_q4(out, m->s.xq, m->s.xs, w); break;
    case 3: matvec_q3(out, m->s.xq, m->s.xs, w); break;
    default: matvec_q2(out, m->s.xq, m->s.xs, w); break;
    }
}

const float *model_forward(twin_model *m, int token, int pos) {
    const twin_config *c = &m->cfg;
    tw_runstate *s = &m->s;
    if (!m->image || token < 0 || (uint32_t)token >= c->vocab_size || pos < 0 ||
        (uint32_t)pos >= c->seq_len)
        return NULL;
    uint32_t dim = c->dim, head_size = dim / c->n_heads;
    uint32_t kv_dim = head_size * c->n_kv_heads, kv_mul = c->n_heads / c->n_kv_heads;
    int kv_int8 = (c->flags & TW_FLAG_KV_INT8) != 0;

    embed_row(s->x, &m->tok_emb, (uint32_t)token);
    rope_table(s->rope_cos, s->rope_sin, (const float *)m->rope_freq.data, head_size / 2, (uint32_t)pos);

    for (uint32_t l = 0; l < c->n_layers; l++) {
        const tw_layer *w = &m->layers[l];
        uint32_t slot0 = l * c->seq_len, slot = slot0 + (uint32_t)pos; /* (layer, position) */

        /* attention: norm, q/k/v projections, RoPE, cache, per-head attention, output */
        rmsnorm(s->xb, s->x, (const float *)w->attn_norm.data, dim, c->norm_eps);
        matmul(m, s->q, s->xb, &w->wq, 0);
        if (!kv_int8) { /* float32 KV cache: k and v are computed in place */
            float *k = s->key_cache + slot * kv_dim, *v = s->value_cache + slot * kv_dim;
            matmul(m, k, s->xb, &w->wk, 1);
            matmul(m, v, s->xb, &w->wv, 1);
            rope_rotate(k, kv_dim, head_size, s->rope_cos, s->rope_sin);
        } else { /* int8 KV cache: k (after RoPE) and v in float32 in xb2, quantized per KV head
                  * with the activations' rule (quantize_act, one group per head) */
            matmul(m, s->xb2, s->xb, &w->wk, 1);
            rope_rotate(s->xb2, kv_dim, head_size, s->rope_cos, s->rope_sin);
            quantize_act(s->key_q + slot * kv_dim, s->key_scale + slot * c->n_kv_heads, s->xb2, kv_dim,
                         (uint32_t)head_size);
            matmul(m, s->xb2, s->xb, &w->wv, 1);
            quantize_act(s->value_q + slot * kv_dim, s->value_scale + slot * c->n_kv_heads, s->xb2, kv_dim,
                         (uint32_t)head_size);
        }
        rope_rotate(s->q, dim, head_size, s->rope_cos, s->rope_sin);
        if (!kv_int8) { /* each KV head's kv_mul query heads at once: they share its keys and values */
            for (uint32_t kvh = 0; kvh < c->n_kv_heads; kvh++) {
                uint32_t h = kvh * kv_mul, kv_off = kvh * head_size;
                attention_heads(s->xb + h * head_size, s->att + h * c->seq_len, c->seq_len, s->q + h * head_size,
                                s->key_cache + slot0 * kv_dim + kv_off, s->value_cache + slot0 * kv_dim + kv_off,
                                kv_dim, (uint32_t)pos + 1, head_size, m->att_scale, kv_mul);
            }
        } else {
            for (uint32_t h = 0; h < c->n_heads; h++) {
                uint32_t kvh = h / kv_mul, kv_off = kvh * head_size;
                attention_head_q8(s->xb + h * head_size, s->att + h * c->seq_len, s->q + h * head_size,
                                  s->key_q + slot0 * kv_dim + kv_off, s->key_scale + slot0 * c->n_kv_heads + kvh,
                                  s->value_q + slot0 * kv_dim + kv_off, s->value_scale + slot0 * c->n_kv_heads + kvh,
                                  kv_dim, c->n_kv_heads, (uint32_t)pos + 1, head_size, m->att_scale);
            }
        }
        matmul(m, s->xb2, s->xb, &w->wo, 0);
        vec_add(s->x, s->xb2, dim);

        /* feed-forward: norm, w1/w3, SwiGLU, w2 */
        rmsnorm(s->xb, s->x, (const float *)w->ffn_norm.data, dim, c->norm_eps);
        matmul(m, s->hb, s->xb, &w->w1, 0);
        matmul(m, s->hb2, s->xb, &w->w3, 1);
        swiglu(s->hb, s->hb2, c->hidden_dim);
        matmul(m, s->xb, s->hb, &w->w2, 0);
        vec_add(s->x, s->xb, dim);
    }

    rmsnorm(s->x, s->x, (const float *)m->final_norm.data, dim, c->norm_eps);
    matmul(m, s->logits, s->x, &m->classifier, 0);
    return s->logits;
}

/* --------------------------------------------------------- sampling, info */

int model_sample(twin_model *m, const float *logits, float temperature, float topp, uint32_t *rng) {
    return (int)sample_logits(logits, m->cfg.vocab_size, temperature, topp, rng, m->s.probs,
                              m->s.probindex);
}

void rng_seed(uint32_t *state, uint32_t seed) { *state = seed ? seed : TW_RNG_SEED0; }

uint32_t model_arena_needed(const twin_model *m) { return m->arena_needed; }
uint32_t model_arena_used(const twin_model *m) { return m->arena_used; }
uint32_t model_image_crc(const twin_model *m) { return m->image_crc; }
uint32_t model_image_size(const twin_model *m) { return m->image_size; }
const char *model_name(const twin_model *m) { return m->cfg.name; }
uint32_t model_vocab_size(const twin_model *m) { return m->cfg.vocab_size; }
uint32_t model_seq_len(const twin_model *m) { return m->cfg.seq_len; }
