"""Issue 8, item 11: the prompt a run uses is the one asked for, or it says what it used instead.

`--prompt ""` is BOS alone (said so), never the default prompt; a byte-level what-if image whose
vocabulary is too small for the text (`twin image --vocab 64`) runs the default prompt folded into its
vocabulary (said so), and refuses a given prompt it cannot take in one line — never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from twin.cli import main
from twin.model import modelgen
from twin.runner import DEFAULT_PROMPT, RunError, prompt_tokens


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def v64(tmp_path_factory) -> Path:
    """The issue's what-if image: random weights, a vocabulary of 64, no tokenizer (byte-level)."""
    out = tmp_path_factory.mktemp("v64") / "v64.twlm"
    r = _invoke("image", "--dim", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--hidden", "32",
                "--vocab", "64", "--context", "32", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert not Path(f"{out}.tokenizer.json").exists()
    return out


def _one_line_error(r) -> str:
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, r.output
    return errors[0]


@pytest.mark.qemu
def test_small_vocabulary_image_runs_the_default_prompt_folded_and_says_so(v64):
    r = _invoke("run", "--platform", "mps2-an386", "--model", str(v64), "--tokens", "4", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    ids = out["prompt_tokens"]
    assert len(ids) == len(modelgen.encode(DEFAULT_PROMPT))       # the same prefill work as the text's
    assert ids[0] == modelgen.BOS and all(0 <= t < 64 for t in ids)
    assert "folded" in out["prompt_note"] and "vocabulary of 64" in out["prompt_note"]
    assert out["matches_reference"] is True


@pytest.mark.qemu
def test_small_vocabulary_image_takes_a_prompt_of_bytes_that_fit(v64):
    r = _invoke("run", "--platform", "mps2-an386", "--model", str(v64), "--tokens", "4", "--prompt", "12, 34",
                "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["prompt_tokens"] == modelgen.encode("12, 34") and out["prompt_note"] is None


def test_small_vocabulary_image_refuses_a_prompt_it_cannot_take_in_one_line(v64):
    line = _one_line_error(_invoke("run", "--platform", "mps2-an386", "--model", str(v64), "--tokens", "4",
                                   "--prompt", "The cat"))
    assert "'The cat'" in line and "vocabulary of 64" in line and "bytes 0..60" in line


@pytest.mark.qemu
def test_empty_prompt_is_bos_alone_and_says_so():
    r = _invoke("run", "--platform", "mps2-an386", "--tokens", "3", "--prompt", "", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["prompt_tokens"] == [modelgen.BOS]                   # not "Once upon a time"
    assert "empty prompt" in out["prompt_note"] and "BOS" in out["prompt_note"]
    assert out["matches_reference"] is True


def test_prompt_tokens_rules():
    builtin = modelgen.builtin_model().tokenizer
    ids, note = prompt_tokens(DEFAULT_PROMPT, builtin, 512)
    assert ids == builtin.encode(DEFAULT_PROMPT) and note is None
    assert prompt_tokens("", None, 512) == ([modelgen.BOS], "empty prompt: BOS alone (id 0)")
    # the fold is deterministic, keeps the length, and stays inside even the tiniest vocabularies
    for vocab in (4, 5, 64, 100):
        ids, note = prompt_tokens(DEFAULT_PROMPT, None, vocab)
        assert ids == prompt_tokens(DEFAULT_PROMPT, None, vocab)[0] and all(0 <= t < vocab for t in ids)
        assert len(ids) == len(modelgen.encode(DEFAULT_PROMPT)) and note
    assert prompt_tokens(DEFAULT_PROMPT, None, 2)[0] == [modelgen.BOS]
    with pytest.raises(RunError, match="holds no byte"):
        prompt_tokens("a", None, 3)

    class NoBos:                                  # an HF tokenizer whose model adds no BOS
        name = "hf"

        def encode(self, text: str) -> list[int]:
            return [5] * len(text)

    with pytest.raises(RunError, match="at least one"):
        prompt_tokens("", NoBos(), 512)
    with pytest.raises(RunError, match="not this model's tokenizer"):
        prompt_tokens("abc", NoBos(), 4)


@pytest.mark.qemu
def test_predict_takes_the_empty_prompt_as_bos_alone():
    from calibration.predict import predict

    empty = predict("stm32f4-disco", prompt="", tokens=2)
    default = predict("stm32f4-disco", tokens=2)
    assert empty["ttft_seconds"]["value"] < default["ttft_seconds"]["value"]
