"""Accuracy of quantization schemes, measured by the host references on held-out text.

For each scheme (a QuantRecipe) the model is quantized into an image and run by QuantReference —
the firmware's arithmetic, bit for bit, so these are the numbers the device would give — teacher-
forced over the text's tokens, in windows of the model's context: each window is BOS followed by up
to seq_len - 1 text tokens, and every text token is predicted from its window's prefix. The float
model (batched float64 forward, equal to FloatReference up to rounding) gives the baseline.

Per scheme: perplexity (exp of the mean negative log-likelihood of the text's tokens), the float
model's perplexity, top-1 agreement with the float model (argmax equal), mean KL(float || quant) in
nats, top-1 accuracy on the text's next token, and the bytes of the stored weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from twin.model import modelgen
from twin.model.image import QuantRecipe, read_image, write_image
from twin.model.modelgen import BOS, FloatModel
from twin.model.reference import QuantReference


class AccuracyError(ValueError):
    """The evaluation cannot run; the message says what to do."""


def load_model(spec: str) -> FloatModel:
    """'builtin', or a model file the importers read (twin.model.importers.load_model)."""
    if spec == "builtin":
        return modelgen.builtin_model()
    try:
        from twin.model.importers import load_model as import_model
    except ImportError:
        raise AccuracyError(f"cannot read {spec}: model importers (twin.model.importers) are not available; "
                            "use --model builtin") from None
    return import_model(spec)


def tokenize(model: FloatModel, text: str) -> list[int]:
    """The text's token ids (no BOS) with the model's tokenizer, or byte-level without one."""
    tok = getattr(model, "tokenizer", None)
    return list(tok.encode(text, bos=False)) if tok is not None else modelgen.encode(text, bos=False)


def windows(tokens: Sequence[int], seq_len: int, bos: int | None = BOS) -> list[list[int]]:
    """BOS + consecutive chunks of seq_len - 1 tokens: position p of a window predicts token p + 1.
    Without a BOS (e.g. GPT-2-style tokenizers) a window starts with the token before its chunk
    (the text's first token is then context only)."""
    step = seq_len - 1
    if bos is None:
        return [list(tokens[i:i + seq_len]) for i in range(0, len(tokens) - 1, step)]
    return [[bos, *tokens[i:i + step]] for i in range(0, len(tokens), step)]


def bos_id(model: FloatModel) -> int | None:
    """The BOS id the model's text starts with: its tokenizer's (None if it adds none), the twin's own
    without a tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return BOS
    return tok.bos_id if getattr(tok, "add_bos", True) else None


# ------------------------------------------------------------------ forward passes


def float_logits(model: FloatModel, window: Sequence[int]) -> np.ndarray:
    """Logits (len(window), vocab) of the float model at every position, in one causal batch
    (float64, exact exp/sqrt/sin/cos: FloatReference's math without the per-token loop)."""
    c = model.config
    hs, kv_mul, eps = c.head_size, c.n_heads // c.n_kv_heads, c.norm_eps
    t = len(window)
    angle = np.arange(t)[:, None] * model.rope_freq.astype(np.float64)[None, :]
    cos_t, sin_t = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]

    def rope(v: np.ndarray) -> np.ndarray:            # v: (t, heads * hs)
        p = v.reshape(t, -1, hs // 2, 2)
        return np.stack([p[..., 0] * cos_t - p[..., 1] * sin_t,
                         p[..., 0] * sin_t + p[..., 1] * cos_t], axis=-1).reshape(t, -1)

    def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * w.astype(np.float64)

    def f64(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64)

    causal = np.triu(np.ones((t, t), dtype=bool), k=1)
    x = f64(model.tok_emb[list(window)])
    for w in model.layers:
        xb = rmsnorm(x, w.attn_norm)
        q = rope(xb @ f64(w.wq).T).reshape(t, c.n_heads, hs).transpose(1, 0, 2)
        k = rope(xb @ f64(w.wk).T).reshape(t, c.n_kv_heads, hs).transpose(1, 0, 2)
        v = (xb @ f64(w.wv).T).reshape(t, c.n_kv_heads, hs).transpose(1, 0, 2)
        kv = np.arange(c.n_heads) // kv_mul
        scores = q @ k[kv].transpose(0, 2, 1) / np.sqrt(hs)          # (heads, t, t)
        scores[:, causal] = -np.inf
        att = np.exp(scores - scores.max(axis=2, keepdims=True))
        att /= att.sum(axis=2, keepdims=True)
        x = x + (att @ v[kv]).transpose(1, 0, 2).reshape(t, c.dim) @ f64(w.wo).T
        xb = rmsnorm(x, w.ffn_norm)
        a, b = xb @ f64(w.w1).T, xb @ f64(w.w3).T
        x = x + (a / (1.0 + np.exp(-a)) * b) @ f64(w.w2).T
    return rmsnorm(x, model.final_norm) @ f64(model.classifier_weights).T


def quant_logits(ref: QuantReference, window: Sequence[int]) -> np.ndarray:
    """Logits (len(window), vocab) of the bit-exact firmware mirror, teacher-forced."""
    ref.reset()
    return np.stack([ref.forward(tok, pos) for pos, tok in enumerate(window)])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------ evaluation


@dataclass
class SchemeAccuracy:
    scheme: str               # QuantRecipe.label, e.g. q4g32, q3g64a+tok_emb=q8g64a
    bits: int                 # the recipe's default width
    group_size: int
    symmetric: bool
    mixed: bool               # per-tensor overrides present
    perplexity: float
    float_perplexity: float
    top1_agreement: float     # argmax(quant) == argmax(float), fraction of positions
    kl_divergence: float      # mean KL(float || quant), nats per token
    top1_accuracy: float      # argmax(quant) == the text's next token
    float_top1_accuracy: float
    weight_bytes: int         # tensor data + scales + zero points as stored
    image_bytes: int
    tokens: int               # predicted positions


def evaluate(model: FloatModel, text: str | Sequence[int], recipes: Sequence[QuantRecipe],
             max_tokens: int | None = 512) -> list[SchemeAccuracy]:
    """Evaluate each recipe on `text` (a string, or token ids without BOS), first max_tokens tokens."""
    tokens = tokenize(model, text) if isinstance(text, str) else list(text)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if not tokens:
        raise AccuracyError("the evaluation text has no tokens")
    if any(not 0 <= t < model.config.vocab_size for t in tokens):
        raise AccuracyError(f"token ids out of the model's vocabulary (size {model.config.vocab_size})")
    wins = windows(tokens, model.config.seq_len, bos_id(model))
    if not wins:
        raise AccuracyError("the evaluation text needs at least two tokens for a model without BOS")
    targets = [np.array(w[1:]) for w in wins]

    def scores(logits_per_window: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log-probabilities at predicting positions, their NLL of the targets, their argmax."""
        lp = np.concatenate([_log_softmax(lg[: len(tg)]) for lg, tg in zip(logits_per_window, targets, strict=True)])
        tg = np.concatenate(targets)
        return lp, -lp[np.arange(len(tg)), tg], lp.argmax(axis=1)

    flp, fnll, fargmax = scores([float_logits(model, w) for w in wins])
    target = np.concatenate(targets)
    out = []
    for recipe in recipes:
        image = write_image(model, recipe=recipe)
        qm = read_image(image)
        ref = QuantReference(qm)
        qlp, qnll, qargmax = scores([quant_logits(ref, w) for w in wins])
        kl = np.sum(np.exp(flp) * (flp - qlp), axis=1)
        d = recipe.default
        out.append(SchemeAccuracy(
            scheme=recipe.label, bits=d.bits, group_size=d.group_size, symmetric=d.symmetric,
            mixed=not recipe.is_uniform,
            perplexity=float(np.exp(qnll.mean())), float_perplexity=float(np.exp(fnll.mean())),
            top1_agreement=float(np.mean(qargmax == fargmax)), kl_divergence=float(kl.mean()),
            top1_accuracy=float(np.mean(qargmax == target)), float_top1_accuracy=float(np.mean(fargmax == target)),
            weight_bytes=sum(t.stored_bytes for t in qm.tensors.values()), image_bytes=len(image),
            tokens=len(target)))
    return out


def as_dicts(results: Sequence[SchemeAccuracy]) -> list[dict]:
    return [asdict(r) for r in results]


def table(results: Sequence[SchemeAccuracy]) -> str:
    lines = [f"{'scheme':<28}{'weights':>10}{'ppl':>10}{'float ppl':>11}{'top-1 agr':>11}{'KL nats':>10}"
             f"{'top-1 acc':>11}"]
    for r in results:
        lines.append(f"{r.scheme:<28}{r.weight_bytes / 1024:>8.1f}Ki{r.perplexity:>10.3f}{r.float_perplexity:>11.3f}"
                     f"{100 * r.top1_agreement:>10.1f}%{r.kl_divergence:>10.4f}{100 * r.top1_accuracy:>10.1f}%")
    if results:
        lines.append(f"({results[0].tokens} tokens; float top-1 accuracy {100 * results[0].float_top1_accuracy:.1f}%)")
    return "\n".join(lines)


def chart(results: Sequence[SchemeAccuracy], path: str | Path, title: str = "") -> Path:
    """Perplexity against stored weight size, and top-1 agreement per scheme (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    kib = [r.weight_bytes / 1024 for r in results]
    left.plot(kib, [r.perplexity for r in results], "o")
    for r, x in zip(results, kib, strict=True):
        left.annotate(r.scheme.split("+")[0] + ("+" if r.mixed else ""), (x, r.perplexity),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    if results:
        left.axhline(results[0].float_perplexity, linestyle="--", color="grey", label="float")
        left.legend()
    left.set_xlabel("stored weights (KiB)")
    left.set_ylabel("perplexity")
    left.set_title("perplexity vs size")
    right.bar(range(len(results)), [100 * r.top1_agreement for r in results], color="tab:blue")
    right.set_xticks(range(len(results)), [r.scheme.split("+")[0] + ("+" if r.mixed else "") for r in results],
                     rotation=45, ha="right", fontsize=8)
    right.set_ylim(0, 100)
    right.set_ylabel("top-1 agreement with float (%)")
    right.set_title("agreement with the float model")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
