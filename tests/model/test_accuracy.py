"""Accuracy of quantization schemes (twin/model/accuracy.py and `twin quantize`): the float batch path, the
metrics against a direct per-token computation, the ordering of schemes, the CLI contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from twin.cli.main import main
from twin.model import accuracy as acc
from twin.model.image import QuantRecipe, write_image
from twin.model.modelgen import BOS, builtin_model
from twin.model.reference import FloatReference, QuantReference
from twin.platforms import ROOT  # the repository

HELDOUT = ROOT / "models" / "heldout.txt"
FALLBACK_TEXT = (
    "The little robot walked along the river every morning, counting the boats and the birds. "
    "One day a heron asked him why he counted, and he said that numbers kept him company. "
    "The heron laughed, and from then on they counted together until the sun was high.\n") * 4


def held_out_text() -> str:
    return HELDOUT.read_text(encoding="utf-8") if HELDOUT.is_file() else FALLBACK_TEXT


def test_windows_cover_every_token_once():
    toks = list(range(3, 3 + 130))
    wins = acc.windows(toks, 64)
    assert [len(w) for w in wins] == [64, 64, 5]
    assert all(w[0] == BOS for w in wins)
    assert [t for w in wins for t in w[1:]] == toks
    wins = acc.windows(toks, 64, bos=1)                    # an imported Llama's BOS
    assert all(w[0] == 1 for w in wins)


def test_windows_without_bos_predict_every_token_but_the_first():
    toks = list(range(3, 3 + 130))
    wins = acc.windows(toks, 64, bos=None)
    assert all(len(w) <= 64 for w in wins)
    assert [t for w in wins for t in w[1:]] == toks[1:]    # each predicted once, from real context
    assert acc.windows([5], 64, bos=None) == []


def test_float_batch_equals_float_reference():
    model = builtin_model()
    window = [BOS, *acc.tokenize(model, "Once upon a time, in a land far away")][:20]
    fr = FloatReference(model)
    slow = np.stack([fr.forward(t, p) for p, t in enumerate(window)])
    assert np.allclose(acc.float_logits(model, window), slow, rtol=1e-9, atol=1e-9)


def test_metrics_equal_a_direct_computation():
    """Perplexity, top-1 agreement/accuracy and KL against a slow per-token loop over two windows."""
    model = builtin_model()
    seq = model.config.seq_len
    tokens = (acc.tokenize(model, held_out_text()) * 2)[: seq + 6]   # crosses a window boundary
    recipe = QuantRecipe.make(4, 32)
    [r] = acc.evaluate(model, tokens, [recipe], max_tokens=None)

    fr, qr = FloatReference(model), QuantReference(write_image(model, recipe=recipe))
    nll_q, nll_f, agree, hit, kl = [], [], 0, 0, 0.0
    for start in range(0, len(tokens), seq - 1):
        window = [BOS, *tokens[start:start + seq - 1]]
        fr.reset()
        qr.reset()
        for pos in range(len(window) - 1):
            f = fr.forward(window[pos], pos).astype(float)
            q = qr.forward(window[pos], pos).astype(float)
            target = window[pos + 1]
            lse_f = math.log(sum(math.exp(v - f.max()) for v in f)) + f.max()
            lse_q = math.log(sum(math.exp(v - q.max()) for v in q)) + q.max()
            nll_f.append(lse_f - f[target])
            nll_q.append(lse_q - q[target])
            agree += int(np.argmax(f) == np.argmax(q))
            hit += int(np.argmax(q) == target)
            kl += sum(math.exp(a - lse_f) * ((a - lse_f) - (b - lse_q)) for a, b in zip(f, q, strict=True))
    n = len(tokens)
    assert r.tokens == n
    assert r.perplexity == pytest.approx(math.exp(sum(nll_q) / n), rel=1e-9)
    assert r.float_perplexity == pytest.approx(math.exp(sum(nll_f) / n), rel=1e-6)
    assert r.top1_agreement == agree / n
    assert r.top1_accuracy == hit / n
    assert r.kl_divergence == pytest.approx(kl / n, rel=1e-5, abs=1e-9)
    assert (r.bits, r.group_size, r.symmetric, r.mixed, r.scheme) == (4, 32, True, False, "q4g32")


def test_more_bits_stay_closer_to_the_float_model():
    """The issue's requirement, on the built-in model: 8-bit closer to float than 4-bit, 4-bit closer than
    2-bit (KL divergence and top-1 agreement), symmetric and asymmetric."""
    model = builtin_model()
    for symmetric in (True, False):
        res = acc.evaluate(model, held_out_text(), [QuantRecipe.make(b, 32, symmetric) for b in (8, 4, 2)],
                           max_tokens=128)
        kl = [r.kl_divergence for r in res]
        agree = [r.top1_agreement for r in res]
        assert kl[0] < kl[1] < kl[2], (symmetric, kl)
        assert agree[0] > agree[1] > agree[2], (symmetric, agree)
        gap = [abs(r.perplexity - r.float_perplexity) for r in res]      # perplexity closer to float
        assert gap[0] < gap[1] < gap[2], (symmetric, gap)
        # weights shrink with the width
        assert res[0].weight_bytes > res[1].weight_bytes > res[2].weight_bytes


def test_mixed_recipe_is_evaluated():
    model = builtin_model()
    plain, mixed = acc.evaluate(model, held_out_text(), [
        QuantRecipe.make(2, 32), QuantRecipe.make(2, 32, overrides={"tok_emb": 8})], max_tokens=64)
    assert mixed.mixed and not plain.mixed and "tok_emb=q8g32" in mixed.scheme
    assert mixed.weight_bytes > plain.weight_bytes


def test_evaluate_rejects_empty_text():
    with pytest.raises(acc.AccuracyError, match="no tokens"):
        acc.evaluate(builtin_model(), "", [QuantRecipe.make(4)])


def test_model_lookup_errors_clearly(tmp_path):
    with pytest.raises(ValueError):
        acc.load_model(str(tmp_path / "missing.bin"))


# ------------------------------------------------------------------ CLI


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_quantize_cli_json_and_chart(tmp_path):
    text = tmp_path / "held.txt"
    text.write_text(held_out_text()[:2000])
    chart = tmp_path / "chart.png"
    r = invoke("quantize", "--bits", "4,8", "--eval", str(text), "--max-tokens", "40", "--json", "-o", str(chart))
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["bits"] for row in rows] == [4, 8]
    for row in rows:
        assert {"bits", "group_size", "scheme", "perplexity", "float_perplexity", "top1_agreement",
                "weight_bytes"} <= set(row)
        assert row["group_size"] == 32 and row["perplexity"] > 1 and 0 <= row["top1_agreement"] <= 1
    assert rows[0]["weight_bytes"] < rows[1]["weight_bytes"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = invoke("quantize", "--bits", "3", "--asymmetric", "--group-size", "64", "--override", "tok_emb=8",
                   "--eval", str(text), "--max-tokens", "20")
    assert table.exit_code == 0 and "q3g64a+tok_emb=q8g64a" in table.output


@pytest.mark.parametrize("args,message", [
    (["--bits", "4,5"], "unsupported quantization: 5 bits"),
    (["--bits", "four"], "expected comma-separated widths"),
    (["--override", "attn_norm=8"], "unknown tensor 'attn_norm'"),
    (["--model", "/nonexistent/model.bin"], "/nonexistent/model.bin"),
])
def test_quantize_cli_errors_are_one_line(tmp_path, args, message):
    text = tmp_path / "held.txt"
    text.write_text("hello")
    r = invoke("quantize", "--eval", str(text), *args)
    assert r.exit_code != 0
    line = r.output.strip()
    assert "\n" not in line and message in line, line
