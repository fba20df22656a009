"""Host references for the firmware's model runtime.

QuantReference mirrors firmware/runtime/kernels_ref.c, model.c and the reference matvecs
(firmware/kernels/ref; every other kernel set gives the same bits) operation by operation in
float32 (numpy elementwise float32 operations are IEEE binary32), so its tokens and logits are
bit-identical to the firmware's. FloatReference is plain float64 math without quantization,
for accuracy comparisons.

Mirroring rules (see firmware/runtime/model.h): every constant is an np.float32 (a Python float
would promote to float64), sums are sequential from 0 (seq_sum), float -> int truncates.
"""

from __future__ import annotations

import numpy as np

from twin.model.image import Kind, QuantModel, Tensor, read_image
from twin.model.modelgen import FloatModel

F = np.float32


def _c(hexfloat: str) -> np.float32:
    return F(float.fromhex(hexfloat))


# Constants of kernels_ref.c (bit-identical).
LOG2E, LN2_HI, LN2_LO = _c("0x1.715476p+0"), _c("0x1.62e3p-1"), _c("0x1.2fefa2p-17")
TWO_OVER_PI = _c("0x1.45f306p-1")
PIO2_HI, PIO2_MID, PIO2_LO = _c("0x1.92p+0"), _c("0x1.fb4p-12"), _c("0x1.4442d2p-24")
INV_FACT = {k: _c(h) for k, h in {
    3: "0x1.555556p-3", 4: "0x1.555556p-5", 5: "0x1.111112p-7", 6: "0x1.6c16c2p-10",
    7: "0x1.a01a02p-13", 8: "0x1.a01a02p-16", 9: "0x1.71de3ap-19"}.items()}
HALF, ONE, ZERO = F(0.5), F(1.0), F(0.0)
RNG_SEED0 = 0x9E3779B9


# -------------------------------------------------------------------- math


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """(int)(v + (v >= 0 ? 0.5f : -0.5f))"""
    return (v + np.where(v >= ZERO, HALF, -HALF).astype(F)).astype(np.int32)


def tw_sqrtf(x: np.ndarray) -> np.ndarray:
    """The firmware's sqrt is correctly rounded, i.e. IEEE float32 sqrt."""
    return np.sqrt(np.asarray(x, dtype=F))


def tw_expf(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=F)
    with np.errstate(all="ignore"):
        t = x * LOG2E
        k = np.clip(_round_half_away(t), -126, 127)
        kf = k.astype(F)
        r = (x - kf * LN2_HI) - kf * LN2_LO
        p = INV_FACT[6]
        for coef in (INV_FACT[5], INV_FACT[4], INV_FACT[3], HALF, ONE, ONE):
            p = coef + r * p
        scale = ((k + 127).astype(np.uint32) << np.uint32(23)).view(F)
        y = p * scale
    y = np.where(x > F(88.0), F(np.inf), y)
    return np.where(x < F(-80.0), ZERO, y).astype(F)


def tw_sincosf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos; bit-exact with the firmware for |x| < 2^31 * pi / 2 (accurate to |x| < 6000)."""
    x = np.asarray(x, dtype=F)
    with np.errstate(all="ignore"):
        t = x * TWO_OVER_PI
        n = _round_half_away(t)
        nf = n.astype(F)
        r = ((x - nf * PIO2_HI) - nf * PIO2_MID) - nf * PIO2_LO
        r2 = r * r
        ps = INV_FACT[9]
        for coef in (-INV_FACT[7], INV_FACT[5], -INV_FACT[3]):
            ps = coef + r2 * ps
        sr = r + (r * r2) * ps
        pc = INV_FACT[8]
        for coef in (-INV_FACT[6], INV_FACT[4], -HALF):
            pc = coef + r2 * pc
        cr = ONE + r2 * pc
    quadrant = n & 3
    s = np.choose(quadrant, [sr, cr, -sr, -cr]).astype(F)
    c = np.choose(quadrant, [cr, -sr, -cr, sr]).astype(F)
    return s, c


def seq_sum(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sequential float32 sum from 0.0f: s = 0; s = s + a[0]; s = s + a[1]; ..."""
    a = np.moveaxis(np.asarray(a, dtype=F), axis, -1)
    z = np.zeros(a.shape[:-1] + (1,), dtype=F)
    return np.add.accumulate(np.concatenate([z, a], axis=-1), axis=-1, dtype=F)[..., -1]


def seq_cumsum(a: np.ndarray) -> np.ndarray:
    """Running sequential sums (1-D), each starting from 0.0f."""
    return np.add.accumulate(np.concatenate([[ZERO], np.asarray(a, dtype=F)]), dtype=F)[1:]


# ---------------------------------------------------------------- kernels


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: np.float32) -> np.ndarray:
    ss = seq_sum(x * x)
    ss = ss / F(x.shape[0])
    ss = ss + eps
    inv = ONE / tw_sqrtf(ss)
    return (x * inv) * w


def softmax(x: np.ndarray) -> np.ndarray:
    e = tw_expf(x - x.max())
    inv = ONE / seq_sum(e)
    return e * inv


def swiglu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a / (ONE + tw_expf(-a))) * b


def quantize_act(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 per group (as int32, shape (groups, group_size)) and float32 scales."""
    n = x.shape[0]
    ng = -(-n // group_size)
    xp = np.zeros(ng * group_size, dtype=F)
    xp[:n] = x
    g = xp.reshape(ng, group_size)
    scale = np.abs(g).max(axis=1) / F(127.0)
    safe = np.where(scale != ZERO, scale, ONE).astype(F)
    # a normal scale: x * (1 / scale) (llama.cpp's Q8_0 rule); a subnormal one: x / scale, clamped
    normal = (safe >= F(2.0**-126))[:, None]
    with np.errstate(over="ignore", invalid="ignore"):         # 1 / a subnormal: inf, the other branch
        inv = (ONE / safe)[:, None]
        v = np.where(normal, g * inv, g / safe[:, None])
    q = np.clip(_round_half_away(v), -127, 127)
    real = (np.arange(ng * group_size) < n).reshape(ng, group_size)
    q = np.where(real & (scale != ZERO)[:, None], q, 0).astype(np.int32)
    return q, scale


class QMatrix:
    """A quantized tensor ready for matvec: levels q = c - z as int32 (rows, groups, group_size).

    Mirrors matvec_q2/q3/q4/q8 for both schemes: the firmware's per-group integer sum
    isum = sum (c - z) * xq is exact, so summing q * xq (einsum, exact in int) gives the same int32;
    the float part ((float)isum * scale) * xs, summed over groups in order, is the same operations."""

    def __init__(self, t: Tensor):
        assert t.scales is not None
        self.tensor = t
        self.group_size = t.group_size
        self.q = t.values.astype(np.int32).reshape(t.rows, -1, t.group_size)
        self.scales = t.scales

    def matvec(self, x: np.ndarray) -> np.ndarray:
        xq, xs = quantize_act(x, self.group_size)
        isum = np.einsum("rgk,gk->rg", self.q, xq)
        return seq_sum((isum.astype(F) * self.scales) * xs[None, :], axis=1)

    def row(self, i: int) -> np.ndarray:
        t = self.tensor
        return (self.q[i].astype(F) * self.scales[i][:, None]).reshape(-1)[: t.cols]


def rope_table(freq: np.ndarray, pos: int) -> tuple[np.ndarray, np.ndarray]:
    s, c = tw_sincosf(F(pos) * freq)
    return c, s


def rope_rotate(v: np.ndarray, head_size: int, cos_t: np.ndarray, sin_t: np.ndarray) -> np.ndarray:
    p = v.reshape(-1, head_size // 2, 2)
    v0, v1 = p[:, :, 0], p[:, :, 1]
    out = np.empty_like(p)
    out[:, :, 0] = v0 * cos_t - v1 * sin_t
    out[:, :, 1] = v0 * sin_t + v1 * cos_t
    return out.reshape(-1)


def attention_head(q: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: np.float32) -> np.ndarray:
    """keys/values: (n_pos, head_size)."""
    att = softmax(seq_sum(keys * q[None, :], axis=1) * scale)
    return seq_sum(att[:, None] * values, axis=0)


def attention_heads(q: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: np.float32) -> np.ndarray:
    """attention_head for every head at once (the same float32 operations per element and the same
    sequential sums). q: (n_heads, head_size); keys/values: (n_heads, n_pos, head_size) -> (n_heads, head_size)."""
    scores = seq_sum(keys * q[:, None, :], axis=2) * scale
    e = tw_expf(scores - scores.max(axis=1, keepdims=True))
    att = e * (ONE / seq_sum(e, axis=1))[:, None]
    return seq_sum(att[:, :, None] * values, axis=1)


def attention_heads_q8(q: np.ndarray, key_q: np.ndarray, key_scale: np.ndarray, value_q: np.ndarray,
                       value_scale: np.ndarray, scale: np.float32) -> np.ndarray:
    """attention_head_q8 for every head: q (n_heads, head_size); key_q/value_q int levels
    (n_heads, n_pos, head_size); key_scale/value_scale (n_heads, n_pos) -> (n_heads, head_size)."""
    scores = (seq_sum(key_q.astype(F) * q[:, None, :], axis=2) * key_scale) * scale
    e = tw_expf(scores - scores.max(axis=1, keepdims=True))
    att = e * (ONE / seq_sum(e, axis=1))[:, None]
    return seq_sum((att * value_scale)[:, :, None] * value_q.astype(F), axis=1)


# --------------------------------------------------------------- sampling


class Rng:
    """xorshift32, as rng_next()/rng_float() in the firmware."""

    def __init__(self, seed: int = 0):
        self.state = (seed & 0xFFFFFFFF) or RNG_SEED0

    def next(self) -> int:
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def float(self) -> np.float32:
        return F(self.next() >> 8) * F(2.0**-24)


def sample_logits(logits: np.ndarray, temperature: float, topp: float, rng: Rng) -> int:
    """Mirror of sample_logits() in kernels_ref.c."""
    logits = np.asarray(logits, dtype=F)
    temperature, topp, n = F(temperature), F(topp), logits.shape[0]
    if temperature == ZERO or n == 1:
        return int(np.argmax(logits))
    probs = softmax(logits / temperature)
    r = rng.float()
    if not (ZERO < topp < ONE):
        hit = np.nonzero(r < seq_cumsum(probs))[0]
        return int(hit[0]) if hit.size else n - 1
    cutoff = (ONE - topp) / F(n - 1)
    cand = np.nonzero(probs >= cutoff)[0]
    if cand.size == 0:
        return int(np.argmax(probs))
    order = cand[np.lexsort((cand, -probs[cand]))]  # prob descending, index ascending
    cum = seq_cumsum(probs[order])
    over = np.nonzero(cum > topp)[0]
    last = int(over[0]) if over.size else order.size - 1
    hit = np.nonzero(r * cum[last] < cum[: last + 1])[0]
    return int(order[hit[0]]) if hit.size else int(order[last])


# -------------------------------------------------------------- references


def _check_generate_args(prompt: list[int], n_tokens: int, vocab: int, seq_len: int) -> None:
    if len(prompt) < 1 or n_tokens < 0 or len(prompt) + n_tokens > seq_len:
        raise ValueError(f"need 1 <= len(prompt) and len(prompt) + n_tokens <= seq_len ({seq_len})")
    if any(not 0 <= t < vocab for t in prompt):
        raise ValueError(f"prompt token out of range [0, {vocab})")


class _Generator:
    vocab_size: int
    seq_len: int

    def forward(self, token: int, pos: int) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def generate(self, prompt: list[int], n_tokens: int, seed: int = 0, temperature: float = 0.0,
                 topp: float = 0.9) -> list[int]:
        """The firmware application's generation loop (see firmware/runtime/model.h)."""
        _check_generate_args(prompt, n_tokens, self.vocab_size, self.seq_len)
        self.reset()
        pos = 0
        for tok in prompt[:-1]:
            self.forward(tok, pos)
            pos += 1
        token, rng, out = prompt[-1], Rng(seed), []
        for _ in range(n_tokens):
            logits = self.forward(token, pos)
            pos += 1
            token = sample_logits(logits, temperature, topp, rng)
            out.append(token)
        return out


class QuantReference(_Generator):
    """Bit-exact mirror of the firmware's forward pass and sampling."""

    def __init__(self, model: QuantModel | bytes):
        self.model = model if isinstance(model, QuantModel) else read_image(model)
        c = self.model.config
        self.config, self.vocab_size, self.seq_len = c, c.vocab_size, c.seq_len
        self.eps = F(c.norm_eps)
        self.tok_emb = QMatrix(self.model.tensor(Kind.TOK_EMB))
        self.classifier = QMatrix(self.model.tensor(Kind.CLASSIFIER))
        self.final_norm = self.model.tensor(Kind.FINAL_NORM).values[0]
        self.rope_freq = self.model.tensor(Kind.ROPE_FREQ).values[0]
        self.layers = []
        for i in range(c.n_layers):
            def t(kind: Kind, i: int = i) -> Tensor:
                return self.model.tensor(kind, i)
            self.layers.append({
                "attn_norm": t(Kind.ATTN_NORM).values[0], "ffn_norm": t(Kind.FFN_NORM).values[0],
                **{k.name.lower(): QMatrix(t(k)) for k in (Kind.WQ, Kind.WK, Kind.WV, Kind.WO,
                                                           Kind.W1, Kind.W2, Kind.W3)}})
        self.att_scale = ONE / tw_sqrtf(F(c.head_size))
        self.reset()

    def reset(self) -> None:
        c = self.config
        if self.model.kv_cache == "int8":   # levels and one scale per (layer, position, KV head)
            self.key_cache = np.zeros((c.n_layers, c.seq_len, c.n_kv_heads, c.head_size), dtype=np.int32)
            self.value_cache = np.zeros((c.n_layers, c.seq_len, c.n_kv_heads, c.head_size), dtype=np.int32)
            self.key_scale = np.zeros((c.n_layers, c.seq_len, c.n_kv_heads), dtype=F)
            self.value_scale = np.zeros((c.n_layers, c.seq_len, c.n_kv_heads), dtype=F)
        else:
            self.key_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim), dtype=F)
            self.value_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim), dtype=F)

    def _attention_int8(self, li: int, pos: int, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                        kv_of_head: np.ndarray) -> np.ndarray:
        """Quantize k, v per KV head (quantize_act, group = head_size), store, attend (attention_head_q8)."""
        c, hs = self.config, self.config.head_size
        self.key_cache[li, pos], self.key_scale[li, pos] = quantize_act(k, hs)
        self.value_cache[li, pos], self.value_scale[li, pos] = quantize_act(v, hs)
        n = pos + 1

        def per_head(a: np.ndarray) -> np.ndarray:  # (n_pos, n_kv_heads, ...) -> (n_heads, n_pos, ...)
            return np.moveaxis(a[li, :n][:, kv_of_head], 1, 0)

        return attention_heads_q8(q.reshape(c.n_heads, hs), per_head(self.key_cache), per_head(self.key_scale),
                                  per_head(self.value_cache), per_head(self.value_scale), self.att_scale)

    def forward(self, token: int, pos: int) -> np.ndarray:
        c = self.config
        hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
        kv_of_head = np.arange(c.n_heads) // kv_mul
        if not (0 <= token < c.vocab_size and 0 <= pos < c.seq_len):
            raise ValueError(f"token {token} or position {pos} out of range")
        x = self.tok_emb.row(token)
        cos_t, sin_t = rope_table(self.rope_freq, pos)
        for li, w in enumerate(self.layers):
            # attention
            xb = rmsnorm(x, w["attn_norm"], self.eps)
            q = w["wq"].matvec(xb)
            k = w["wk"].matvec(xb)
            v = w["wv"].matvec(xb)
            q = rope_rotate(q, hs, cos_t, sin_t)
            if self.model.kv_cache == "int8":
                heads = self._attention_int8(li, pos, q, rope_rotate(k, hs, cos_t, sin_t), v, kv_of_head)
            else:
                self.key_cache[li, pos] = rope_rotate(k, hs, cos_t, sin_t)
                self.value_cache[li, pos] = v
                # (n_heads, n_pos, head_size): head h reads KV head h // kv_mul
                keys = self.key_cache[li, : pos + 1].reshape(pos + 1, c.n_kv_heads, hs)[:, kv_of_head]
                values = self.value_cache[li, : pos + 1].reshape(pos + 1, c.n_kv_heads, hs)[:, kv_of_head]
                heads = attention_heads(q.reshape(c.n_heads, hs), keys.transpose(1, 0, 2),
                                        values.transpose(1, 0, 2), self.att_scale)
            x = x + w["wo"].matvec(heads.reshape(-1))
            # feed-forward
            xb = rmsnorm(x, w["ffn_norm"], self.eps)
            hb = swiglu(w["w1"].matvec(xb), w["w3"].matvec(xb))
            x = x + w["w2"].matvec(hb)
        x = rmsnorm(x, self.final_norm, self.eps)
        return self.classifier.matvec(x)


class FloatReference(_Generator):
    """Unquantized float64 forward pass (exact exp/sqrt/sin/cos) of a FloatModel."""

    def __init__(self, model: FloatModel):
        self.model = model
        c = model.config
        self.config, self.vocab_size, self.seq_len = c, c.vocab_size, c.seq_len
        self.reset()

    def reset(self) -> None:
        c = self.config
        self.key_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim))
        self.value_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim))

    @staticmethod
    def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x) + eps) * w.astype(np.float64)

    def forward(self, token: int, pos: int) -> np.ndarray:
        m, c = self.model, self.config
        hs, kv_mul, eps = c.head_size, c.n_heads // c.n_kv_heads, c.norm_eps
        angle = pos * m.rope_freq.astype(np.float64)
        cos_t, sin_t = np.cos(angle), np.sin(angle)

        def rope(v: np.ndarray) -> np.ndarray:
            p = v.reshape(-1, hs // 2, 2)
            return np.stack([p[..., 0] * cos_t - p[..., 1] * sin_t,
                             p[..., 0] * sin_t + p[..., 1] * cos_t], axis=-1).reshape(-1)

        x = m.tok_emb[token].astype(np.float64)
        for li, w in enumerate(m.layers):
            xb = self._rmsnorm(x, w.attn_norm, eps)
            q = rope(w.wq @ xb)
            self.key_cache[li, pos] = rope(w.wk @ xb)
            self.value_cache[li, pos] = w.wv @ xb
            out = np.empty(c.dim)
            for h in range(c.n_heads):
                kv = slice((h // kv_mul) * hs, (h // kv_mul + 1) * hs)
                scores = self.key_cache[li, : pos + 1, kv] @ q[h * hs:(h + 1) * hs] / np.sqrt(hs)
                att = np.exp(scores - scores.max())
                out[h * hs:(h + 1) * hs] = (att / att.sum()) @ self.value_cache[li, : pos + 1, kv]
            x = x + w.wo @ out
            xb = self._rmsnorm(x, w.ffn_norm, eps)
            a, b = w.w1 @ xb, w.w3 @ xb
            x = x + w.w2 @ (a / (1.0 + np.exp(-a)) * b)
        x = self._rmsnorm(x, m.final_norm, eps)
        return m.classifier_weights @ x
