"""Hugging Face tokenizer.json files (twin.model.tokenizer_hf): the ids are the `tokenizers` library's own, BOS
and EOS come from the file (and tokenizer_config.json), HF / ONNX / llama2.c imports pick the file up,
.npz files and image sidecars keep it, and broken files are clear errors. Every tokenizer here is trained
inside the test with the `tokenizers` library."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tokenizers
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from twin.model.importers import ModelFileError, load_model
from twin.model.importers.llama2c import write_llama2c
from twin.model.importers.npz import load_npz, save_npz
from twin.model.modelgen import ModelConfig, generate_model
from twin.model.tokenizer import (
    Tokenizer,
    TokenizerError,
    load_tokenizer,
    sidecar_tokenizer,
    tokenizer_from_json,
)
from twin.model.tokenizer_hf import HFTokenizer
from twin.platforms import ROOT  # the repository

CORPUS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune",
          "must be in want of a wife.", "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
          "The cat sat on the mat; the other cat sat on the other mat.", "café, naïve, déjà vu — 1234567890"]
TEXTS = ["The cat sat on the mat.", "Emma said: «café, naïve» — déjà vu!", "日本語 and emoji 🙂 ☃",
         "tabs\tand\nnewlines\r\n", "a  double  space", "x"]


def _llama_tokenizer() -> tokenizers.Tokenizer:
    """Llama / sentencepiece style, as transformers converts Llama tokenizers: <unk> <s> </s>, the 256
    <0xXX> byte-fallback pieces, then BPE pieces with a Metaspace (▁) pre-tokenizer, a post-processor
    that adds <s>, and the decoder ▁ -> space, byte fallback, fuse, strip the first space."""
    t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=140, special_tokens=["<unk>", "<s>", "</s>"],
                                                      show_progress=False))
    trained = json.loads(t.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in trained["vocab"]:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) for m in trained["merges"]]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                          fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


def _gpt2_tokenizer() -> tokenizers.Tokenizer:
    """GPT-2 style byte-level BPE with one special token, <|endoftext|>, and no BOS in its template."""
    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    return t


_LLAMA, _GPT2 = _llama_tokenizer(), _gpt2_tokenizer()


@pytest.fixture
def llama_tok():
    return _LLAMA


@pytest.fixture
def gpt2_tok():
    return _GPT2


def _save(tok, directory, config: dict | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory / "tokenizer.json"


def _config(vocab: int, **kw) -> ModelConfig:
    base = dict(dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=vocab, seq_len=32,
                name="hf-tok")
    return ModelConfig(**{**base, **kw})


def _padded(n: int) -> int:
    return -(-n // 64) * 64   # padded embeddings, as HF checkpoints often have


# ------------------------------------------------------------------ the tokenizer itself


def test_llama_style_ids_bos_eos_and_round_trip(tmp_path, llama_tok):
    tok = load_tokenizer(_save(llama_tok, tmp_path))
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
    assert {0, 1, 2} <= tok.special
    assert tok.vocab_size == llama_tok.get_vocab_size(with_added_tokens=True)
    for text in TEXTS:
        assert tok.encode(text) == llama_tok.encode(text).ids            # the template's <s>, once
        assert tok.encode(text, bos=False) == llama_tok.encode(text, add_special_tokens=False).ids
        assert tok.encode(text)[0] == 1 and tok.encode(text, bos=False)[:1] != [1]
        assert tok.decode(tok.encode(text)) == text
    # non-ASCII the BPE never saw falls back to <0xXX> pieces
    assert set(tok.encode("🙂", bos=False)) <= {llama_tok.token_to_id(f"<0x{b:02X}>") for b in range(256)} | {
        llama_tok.token_to_id("▁")}
    assert tok.decode([tok.eos_id, tok.bos_id]) == ""
    assert tok.decode([*tok.encode("x", bos=False), tok.vocab_size + 5]) == "x"   # padded ids vanish


def test_gpt2_byte_level_ids_bos_eos_and_round_trip(tmp_path, gpt2_tok):
    tok = load_tokenizer(_save(gpt2_tok, tmp_path))
    eot = gpt2_tok.token_to_id("<|endoftext|>")
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (None, eot, False)
    for text in [*TEXTS, " leading space", "  "]:
        assert tok.encode(text) == tok.encode(text, bos=False) == gpt2_tok.encode(text).ids
        assert tok.decode(tok.encode(text)) == text
    # tokenizer_config.json as transformers writes it for GPT-2: BOS = EOS = <|endoftext|>, not added
    tok = load_tokenizer(_save(gpt2_tok, tmp_path, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                                    "add_bos_token": False}))
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (eot, eot, False)
    assert tok.encode("The cat") == gpt2_tok.encode("The cat").ids
    tok = load_tokenizer(_save(gpt2_tok, tmp_path, {"bos_token": {"content": "<|endoftext|>"}, "add_bos_token": True}))
    assert tok.encode("The cat") == [eot, *gpt2_tok.encode("The cat").ids]


def test_tokenizer_config_beside_the_file_wins(tmp_path, llama_tok):
    tok = load_tokenizer(_save(llama_tok, tmp_path, {"bos_token": "<s>", "eos_token": "</s>",
                                                     "add_bos_token": False}))
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.encode("The cat") == llama_tok.encode("The cat", add_special_tokens=False).ids
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json.*eos_token.*not a token"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": ')
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: not readable JSON"):
        load_tokenizer(tmp_path / "tokenizer.json")


_OURS = [(HFTokenizer(_LLAMA.to_str()), _LLAMA), (HFTokenizer(_GPT2.to_str()), _GPT2)]


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="▁<"), max_size=40))
def test_any_text_round_trips_like_the_library(text):
    for tok, lib in _OURS:
        assert tok.encode(text, bos=False) == lib.encode(text, add_special_tokens=False).ids
        if lib is _GPT2 or not text.startswith(" "):   # Metaspace's decoder drops a leading space
            assert tok.decode(tok.encode(text)) == text


def test_matches_transformers(tmp_path, llama_tok, gpt2_tok):
    transformers = pytest.importorskip("transformers", reason="transformers not installed (parity extra)")
    d = tmp_path / "llama"
    path = _save(llama_tok, d, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True})
    ours = load_tokenizer(path)
    theirs = [transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>",
                                                   unk_token="<unk>"), transformers.AutoTokenizer.from_pretrained(d)]
    for hf in theirs:
        assert (hf.bos_token_id, hf.eos_token_id) == (ours.bos_id, ours.eos_id)
        for text in TEXTS:
            ids = hf(text)["input_ids"]
            assert ours.encode(text) == ids and ids.count(ours.bos_id) == 1
            assert ours.encode(text, bos=False) == hf(text, add_special_tokens=False)["input_ids"]
            assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    path = _save(gpt2_tok, tmp_path / "gpt2")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    ours = load_tokenizer(path)
    for text in TEXTS:
        assert ours.encode(text) == hf(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == hf.decode(hf(text)["input_ids"])


# ------------------------------------------------------------------ importers


def _hf_dir(tmp_path, model):
    from test_importers import _hf_dir as write_hf_dir  # the importer tests' HF directory writer

    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_hf_dir(tmp_path, model)


def test_hf_directory_loads_its_tokenizer_json(tmp_path, llama_tok):
    pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    vocab = llama_tok.get_vocab_size(with_added_tokens=True)
    d = _hf_dir(tmp_path, generate_model(_config(_padded(vocab)), seed=1))
    _save(llama_tok, d)
    m = load_model(d)
    assert isinstance(m.tokenizer, HFTokenizer) and m.config.vocab_size > m.tokenizer.vocab_size == vocab
    assert m.tokenizer.encode("The cat sat.") == llama_tok.encode("The cat sat.").ids
    assert load_model(d / "config.json").tokenizer.encode("x") == llama_tok.encode("x").ids
    # without tokenizer.json: byte-level, as before
    (d / "tokenizer.json").unlink()
    assert load_model(d).tokenizer is None


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, llama_tok):
    pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    vocab = llama_tok.get_vocab_size(with_added_tokens=True)
    d = _hf_dir(tmp_path, generate_model(_config(vocab - 10), seed=1))
    _save(llama_tok, d)
    with pytest.raises(ModelFileError, match=rf"tokenizer\.json: the tokenizer has {vocab} token ids, more than "
                                             rf"the model's vocabulary of {vocab - 10}"):
        load_model(d)


def test_exactly_the_vocabulary_is_fine(tmp_path, gpt2_tok):
    vocab = gpt2_tok.get_vocab_size(with_added_tokens=True)
    path = tmp_path / "model.bin"
    path.write_bytes(write_llama2c(generate_model(_config(vocab), seed=2)))
    tok_path = _save(gpt2_tok, tmp_path / "tok")
    m = load_model(path, tokenizer=tok_path)           # llama2.c's tokenizer= takes a tokenizer.json too
    assert isinstance(m.tokenizer, HFTokenizer) and m.tokenizer.vocab_size == m.config.vocab_size
    assert m.tokenizer.encode("The cat") == gpt2_tok.encode("The cat").ids
    assert load_model(path).tokenizer is None             # nothing beside it: byte-level


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.33, 0.5, 0.9, 0.999])
def test_truncated_tokenizer_json_is_a_clear_error(tmp_path, llama_tok, fraction):
    pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    vocab = llama_tok.get_vocab_size(with_added_tokens=True)
    d = _hf_dir(tmp_path, generate_model(_config(_padded(vocab)), seed=1))
    data = _save(llama_tok, d).read_bytes()
    (d / "tokenizer.json").write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: .*(truncated|corrupt).*re-download"):
        load_tokenizer(d / "tokenizer.json")
    with pytest.raises(ModelFileError, match=r"tokenizer\.json: .*re-download"):
        load_model(d)


@pytest.mark.parametrize("spec, message", [
    ({"model": {"type": "BPE", "vocab": "not a vocabulary", "merges": []}}, "tokenizers library cannot read"),
    ({"version": "1.0", "added_tokens": []}, "neither a Hugging Face tokenizer.json .*no 'model' entry"),
    ([1, 2, 3], "neither a Hugging Face tokenizer.json"),
])
def test_malformed_tokenizer_json_is_a_clear_error(tmp_path, spec, message):
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=message) as info:
        load_tokenizer(tmp_path / "tokenizer.json")
    assert str(tmp_path / "tokenizer.json") in str(info.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_picks_up_tokenizer_json(tmp_path, gpt2_tok):
    torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -e '.[parity]')")
    from test_parity import _llama_module  # the parity tests' decoder written in PyTorch

    vocab = gpt2_tok.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    net = _llama_module(vocab=_padded(vocab), dim=32, n_layers=1, n_heads=4, n_kv=2, hidden=48, seq_len=16)
    torch.onnx.export(net, (torch.tensor([[1, 2, 3]]),), str(tmp_path / "decoder.onnx"), dynamo=False)
    assert load_model(tmp_path / "decoder.onnx").tokenizer is None
    _save(gpt2_tok, tmp_path)
    m = load_model(tmp_path / "decoder.onnx")
    assert isinstance(m.tokenizer, HFTokenizer)
    assert m.tokenizer.encode("Emma said") == gpt2_tok.encode("Emma said").ids


# ------------------------------------------------------------------ storage: .npz and image sidecars


def test_npz_round_trip_keeps_the_tokenizer(tmp_path, llama_tok):
    d = tmp_path / "tok"
    m = generate_model(_config(_padded(llama_tok.get_vocab_size(with_added_tokens=True))), seed=3)
    m.tokenizer = load_tokenizer(_save(llama_tok, d, {"bos_token": "<s>", "eos_token": "</s>",
                                                      "add_bos_token": False}))
    save_npz(m, tmp_path / "m.npz")
    (d / "tokenizer_config.json").unlink()   # the resolved BOS/EOS settings travel inside the .npz
    back = load_npz(tmp_path / "m.npz")
    assert isinstance(back.tokenizer, HFTokenizer)
    assert (back.tokenizer.bos_id, back.tokenizer.eos_id, back.tokenizer.add_bos) == (1, 2, False)
    for text in TEXTS:
        assert back.tokenizer.encode(text) == m.tokenizer.encode(text)
        assert back.tokenizer.decode(back.tokenizer.encode(text)) == text
    stored = json.loads(tokenizer_from_json(m.tokenizer.to_json()).to_json())
    assert stored["format"] == "hf-tokenizers-1"


def test_stored_tokenizer_that_is_corrupt_or_too_large(tmp_path, llama_tok):
    m = generate_model(_config(64), seed=3)
    m.tokenizer = HFTokenizer(llama_tok.to_str())
    save_npz(m, tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match=r"m\.npz: the stored tokenizer has \d+ token ids, more than .* 64"):
        load_npz(tmp_path / "m.npz")
    bad = json.loads(m.tokenizer.to_json())
    bad["tokenizer_json"] = bad["tokenizer_json"][:100]
    with pytest.raises(TokenizerError, match="stored tokenizer: not valid JSON"):
        tokenizer_from_json(json.dumps(bad))


def test_old_npz_and_twin_tokenizer_json_load_unchanged():

    models_dir = ROOT / "models"
    own = load_tokenizer(models_dir / "tokenizer.json", 512)
    assert isinstance(own, Tokenizer) and own.name == "austen-bpe512"
    for name in ("austen-260k.npz", "austen-1m.npz"):
        m = load_model(models_dir / name)
        assert isinstance(m.tokenizer, Tokenizer) and m.tokenizer.to_json() == own.to_json()
        assert m.tokenizer.encode("Emma said") == own.encode("Emma said")


def test_twin_image_sidecar_keeps_the_tokenizer(tmp_path, llama_tok):
    """`twin image --from <HF dir>` writes the tokenizer beside the image; `twin run --model` reads it."""
    pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    from twin.cli.main import main
    from twin.runner import model_tokenizer

    vocab = llama_tok.get_vocab_size(with_added_tokens=True)
    d = _hf_dir(tmp_path / "hf", generate_model(_config(_padded(vocab)), seed=4))
    _save(llama_tok, d)
    out = tmp_path / "m.twlm"
    r = CliRunner().invoke(main, ["image", "--from", str(d), "-o", str(out), "--bits", "8", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["tokenizer"] == str(out) + ".tokenizer.json"
    tok = sidecar_tokenizer(out)
    assert isinstance(tok, HFTokenizer) and isinstance(model_tokenizer(str(out)), HFTokenizer)
    assert tok.encode("The cat sat") == llama_tok.encode("The cat sat").ids
    side = tmp_path / "m.twlm.tokenizer.json"
    side.write_text(side.read_text()[:500])
    with pytest.raises(TokenizerError, match=r"m\.twlm\.tokenizer\.json: .*`twin image`"):
        sidecar_tokenizer(out)


@pytest.mark.qemu
def test_twin_run_prompt_uses_the_imported_tokenizer(tmp_path, llama_tok):
    """The `twin run --prompt` path end to end: the prompt ids are the tokenizers library's (one BOS)."""
    pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    from twin.cli.main import main

    vocab = llama_tok.get_vocab_size(with_added_tokens=True)
    d = _hf_dir(tmp_path / "hf", generate_model(_config(_padded(vocab)), seed=5))
    _save(llama_tok, d)
    out = tmp_path / "m.twlm"
    assert CliRunner().invoke(main, ["image", "--from", str(d), "-o", str(out), "--bits", "8"]).exit_code == 0
    prompt = "Emma said: café"
    r = CliRunner().invoke(main, ["run", "--platform", "mps2-an386", "--model", str(out), "--prompt", prompt,
                                  "--tokens", "3", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["prompt_tokens"] == llama_tok.encode(prompt).ids
    assert report["matches_reference"] is True
    assert report["text"] == llama_tok.decode([t for t in report["tokens"] if t < vocab], skip_special_tokens=True)


def test_padded_model_ids_decode_without_error(llama_tok):
    tok = HFTokenizer(llama_tok.to_str())
    ids = list(np.arange(tok.vocab_size - 3, tok.vocab_size + 3))
    assert isinstance(tok.decode(ids), str)
