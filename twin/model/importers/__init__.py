"""Model importers: files of other tools into the twin's FloatModel (twin.model.modelgen).

``load_model(path)`` picks the importer by content (magic bytes, directory contents), not by name alone:

- a directory with config.json (+ model.safetensors or pytorch_model.bin): Hugging Face Llama (hf.py),
  with the tokenizer.json beside config.json
- an ONNX protobuf (.onnx): a Llama-style decoder graph exported from PyTorch (onnx_import.py), with a
  tokenizer.json beside the file
- an .npz with the twin's metadata: the twin's own compact format (npz.py, the built-in models), with
  the tokenizer stored inside it
- otherwise a llama2.c legacy float32 checkpoint (.bin; llama2c.py), with tokenizer.bin beside it

``tokenizer=`` names a tokenizer file instead (tokenizer.bin, a Hugging Face tokenizer.json or the twin's
tokenizer JSON; twin.model.tokenizer.load_tokenizer). Hugging Face tokenizer.json files are run by the
``tokenizers`` library (twin.model.tokenizer_hf). A tokenizer may have fewer ids than the model's vocabulary
(padded embeddings), not more.

Every failure is a ModelFileError that names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

from twin.model.importers.common import ModelFileError
from twin.model.modelgen import FloatModel

__all__ = ["ModelFileError", "load_model", "detect_format"]


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf"
        raise ModelFileError(f"{p}: a directory without config.json is not a Hugging Face model")
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file or directory")
    with open(p, "rb") as f:
        head = f.read(8)
    if p.name == "config.json":
        return "hf"
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(b"TWLM"):
        raise ModelFileError(f"{p}: a quantized twin image (.twlm) is not a float model to import; "
                             "use it directly with `twin run --model`")
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix == ".safetensors":
        return "hf"
    if head[:1] == b"\x08" and not _llama2c_sized(p):   # protobuf field 1 (ir_version), varint
        return "onnx"
    return "llama2c"


def _llama2c_sized(p: Path) -> bool:
    """Whether the file's size is what a llama2.c header at its start announces."""
    from twin.model.importers.llama2c import HEADER, expected_size, read_config

    with open(p, "rb") as f:
        head = f.read(HEADER.size)
    try:
        return expected_size(read_config(head, str(p))) == p.stat().st_size
    except ModelFileError:
        return False


def load_model(path: str | Path, tokenizer: str | Path | None = None) -> FloatModel:
    """Import a model file (see the module doc) into a FloatModel; ``tokenizer`` overrides the tokenizer
    found beside (or inside) it."""
    fmt = detect_format(path)
    if fmt == "hf":
        from twin.model.importers.hf import load_hf

        p = Path(path)
        return load_hf(p.parent if p.is_file() else p, tokenizer=tokenizer)
    if fmt == "onnx":
        from twin.model.importers.onnx_import import load_onnx

        return load_onnx(path, tokenizer=tokenizer)
    if fmt == "npz":
        from twin.model.importers.npz import load_npz

        model = load_npz(path)
        if tokenizer is not None:
            from twin.model.importers.common import find_tokenizer

            model.tokenizer = find_tokenizer(tokenizer, None, model.config.vocab_size)
        return model
    from twin.model.importers.llama2c import load_llama2c

    return load_llama2c(path, tokenizer=tokenizer)
