"""The twin's own compact model file: an .npz of float16 (or float32) weights, the config as JSON and,
optionally, the tokenizer as JSON tagged with its kind (``format``: the twin's own ``twin-tokenizer-1``
or a Hugging Face tokenizer.json, ``hf-tokenizers-1``; twin.model.tokenizer.tokenizer_from_json). Used for the
built-in models in models/. The per-pair RoPE frequencies are stored as float32 (``rope_freq``; files
without it have plain ``rope_theta`` frequencies)."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from twin.model.importers.common import LAYER_FIELDS, ModelFileError, build_model
from twin.model.modelgen import FloatModel, ModelConfig
from twin.model.tokenizer import Tokenizer, TokenizerError, tokenizer_from_json

FORMAT = "twin-npz-1"


def save_npz(model: FloatModel, path: str | Path, dtype: type = np.float16) -> None:
    c = model.config
    arrays = {"tok_emb": model.tok_emb, "final_norm": model.final_norm}
    if model.classifier is not None:
        arrays["classifier"] = model.classifier
    for i, layer in enumerate(model.layers):
        for f in LAYER_FIELDS:
            arrays[f"layers.{i}.{f}"] = getattr(layer, f)
    meta = {"format": FORMAT, "config": dataclasses.asdict(c)}
    out = {k: np.asarray(v, dtype=dtype) for k, v in arrays.items()}
    out["rope_freq"] = np.asarray(model.rope_freq, dtype=np.float32)   # float32 always: scaled RoPE too
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    if model.tokenizer is not None:
        out["tokenizer"] = np.frombuffer(model.tokenizer.to_json().encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)
    Path(path).write_bytes(buf.getvalue())


def load_npz(path: str | Path) -> FloatModel:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise ModelFileError(f"{where}: not a readable .npz model file ({exc})") from None
    if "meta" not in files:
        raise ModelFileError(f"{where}: an .npz without the twin's 'meta' entry is not a twin model file")
    try:
        meta = json.loads(files["meta"].tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ModelFileError(f"{where}: unsupported model file format {meta.get('format')!r}")
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        config = ModelConfig(**{k: v for k, v in meta["config"].items() if k in fields})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{where}: corrupt model metadata ({exc})") from None
    tokenizer = None
    if "tokenizer" in files:
        try:
            tokenizer = tokenizer_from_json(files["tokenizer"].tobytes().decode())
        except (TokenizerError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{where}: {exc}") from None
        if not isinstance(tokenizer, Tokenizer) and tokenizer.vocab_size > config.vocab_size:
            raise ModelFileError(f"{where}: the stored tokenizer has {tokenizer.vocab_size} token ids, more than "
                                 f"the model's vocabulary of {config.vocab_size}")

    def get(name: str, layer: int | None) -> np.ndarray:
        key = name if layer is None else f"layers.{layer}.{name}"
        if key not in files:
            raise ModelFileError(f"{where}: missing tensor {key}")
        return files[key]

    rope_freq = files.get("rope_freq")   # absent in older files: plain rope_theta
    return build_model(config, get, where, tokenizer, rope_freq=rope_freq)

