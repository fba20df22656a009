"""Hugging Face ``tokenizer.json`` tokenizers, run by Hugging Face's ``tokenizers`` library.

The library does the whole pipeline (normalizer, pre-tokenizer, BPE / Unigram / WordPiece model with
byte fallback, decoder); this module only gives it the twin's tokenizer interface (twin.model.tokenizer):

- ``encode(text, bos=True)``: the text's ids without any special tokens the file's post-processor
  would add (``add_special_tokens=False``), after BOS when ``bos`` is true and the model adds one. So
  ``encode(text)`` is what ``tokenizer(text)`` gives in transformers for Llama-style models (BOS, text),
  never an EOS or a second BOS, and ``encode(text, bos=False)`` is the bare text.
- ``decode(ids)``: special tokens and ids past the tokenizer's vocabulary (padded embeddings) vanish.
- BOS and EOS come from ``tokenizer_config.json`` beside the file (``bos_token``, ``eos_token``,
  ``add_bos_token``) or ``special_tokens_map.json``, else from the post-processor's template (a special
  token before ``$A`` is BOS and is added; one after it is EOS), else from well-known token names
  (``<s>``/``</s>``, ``<|begin_of_text|>``/``<|end_of_text|>``, ``<bos>``/``<eos>``, ``<|endoftext|>``).
  The resolved ids are stored with the tokenizer (to_json), so a saved model needs no side files.
"""

from __future__ import annotations

import json
from pathlib import Path

from twin.model.tokenizer import TokenizerError

FORMAT = "hf-tokenizers-1"
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|im_start|>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>")
REDO = ("re-download it, or re-save it with tokenizers' Tokenizer.save() or transformers' "
        "save_pretrained()")


def _library():
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError("reading a Hugging Face tokenizer.json needs the 'tokenizers' package "
                             "(pip install tokenizers)") from None
    return tokenizers


def _token_text(v: object) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _template_tokens(post: object) -> tuple[list[str], list[str]]:
    """Special tokens a TemplateProcessing post-processor puts before and after sequence A."""
    if not isinstance(post, dict):
        return [], []
    if post.get("type") == "Sequence":
        before: list[str] = []
        after: list[str] = []
        for p in post.get("processors") or []:
            b, a = _template_tokens(p)
            before += b
            after += a
        return before, after
    if post.get("type") == "TemplateProcessing":
        before, after, seen = [], [], False
        for item in post.get("single") or []:
            if not isinstance(item, dict):
                continue
            if "Sequence" in item:
                seen = True
            elif isinstance(item.get("SpecialToken"), dict):
                (after if seen else before).append(str(item["SpecialToken"].get("id")))
        return before, after
    if post.get("type") in ("BertProcessing", "RobertaProcessing"):
        cls, sep = post.get("cls"), post.get("sep")
        return ([str(cls[0])] if isinstance(cls, list) and cls else []), \
               ([str(sep[0])] if isinstance(sep, list) and sep else [])
    return [], []


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TokenizerError(f"{path}: not readable JSON ({exc}); fix or remove it") from None
    if not isinstance(d, dict):
        raise TokenizerError(f"{path}: not a JSON object; fix or remove it")
    return d


class HFTokenizer:
    """A Hugging Face tokenizer.json with the twin's tokenizer interface (see the module doc)."""

    def __init__(self, text: str, bos_id: int | None = None, eos_id: int | None = None,
                 add_bos: bool | None = None, name: str | None = None, *, where: str = "tokenizer.json"):
        lib = _library()
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise TokenizerError(f"{where}: not valid JSON, probably truncated or corrupt ({exc}); {REDO}") from None
        if not isinstance(spec, dict) or "model" not in spec:
            raise TokenizerError(f"{where}: not a Hugging Face tokenizer.json (no 'model' entry); {REDO}")
        try:
            self._tok = lib.Tokenizer.from_str(text)
        except Exception as exc:   # the library raises a bare Exception with serde's message
            raise TokenizerError(f"{where}: the tokenizers library cannot read it ({exc}); {REDO}") from None
        self._text = text
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values(), default=-1) + 1
        self.special = frozenset(int(t["id"]) for t in spec.get("added_tokens") or []
                                 if isinstance(t, dict) and t.get("special") and isinstance(t.get("id"), int))
        before, after = _template_tokens(spec.get("post_processor"))

        def find(names) -> int | None:
            for n in names:
                i = self._tok.token_to_id(n)
                if i is not None:
                    return int(i)
            return None

        if bos_id is None:
            bos_id = find(before[:1]) if before else find(BOS_NAMES)
        if eos_id is None:
            eos_id = find(after[:1]) if after else find(EOS_NAMES)
        if add_bos is None:
            add_bos = bool(before) if spec.get("post_processor") else bos_id is not None
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos = bool(add_bos) and bos_id is not None
        model_type = spec["model"].get("type") if isinstance(spec["model"], dict) else None
        self.name = name or f"hf-{str(model_type or 'tokenizer').lower()}"

    # ------------------------------------------------------------------ interface

    @property
    def vocab_size(self) -> int:
        """One past the largest id (added tokens included)."""
        return self._vocab_size

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.add_bos else []) + list(ids)

    def decode(self, ids: list[int]) -> str:
        n = self._vocab_size
        return self._tok.decode([int(i) for i in ids if 0 <= i < n], skip_special_tokens=True)

    def token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    @property
    def library_tokenizer(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "name": self.name, "bos_id": self.bos_id, "eos_id": self.eos_id,
                           "add_bos": self.add_bos, "tokenizer_json": self._text})

    @classmethod
    def from_json(cls, text: str) -> HFTokenizer:
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise TokenizerError(f"not a stored Hugging Face tokenizer (format {d.get('format')!r})")
            bos, eos = d.get("bos_id"), d.get("eos_id")
            return cls(str(d["tokenizer_json"]), bos_id=None if bos is None else int(bos),
                       eos_id=None if eos is None else int(eos), add_bos=bool(d.get("add_bos")),
                       name=str(d.get("name") or "hf"), where="the stored tokenizer")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, TokenizerError):
                raise
            raise TokenizerError(f"malformed stored Hugging Face tokenizer: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """A tokenizer.json, with BOS/EOS from tokenizer_config.json / special_tokens_map.json beside it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{path}: unreadable ({exc}); {REDO}") from None
        settings: dict[str, tuple[object, Path]] = {}
        for side in ("special_tokens_map.json", "tokenizer_config.json"):   # the config wins
            p = path.with_name(side)
            if p.is_file():
                settings.update({k: (v, p) for k, v in _read_json(p).items()
                                 if k in ("bos_token", "eos_token", "add_bos_token")})
        tok = cls(text, where=str(path))
        for key in ("bos_token", "eos_token"):
            if key not in settings:
                continue
            value, source = settings[key]
            content = _token_text(value)
            i = tok._tok.token_to_id(content) if content is not None else None
            if value is not None and i is None:
                raise TokenizerError(f"{source}: {key} {value!r} is not a token of {path}; "
                                     "fix the setting or use the tokenizer files that belong together")
            if key == "bos_token":
                tok.bos_id = None if i is None else int(i)
            else:
                tok.eos_id = None if i is None else int(i)
        if "add_bos_token" in settings:
            tok.add_bos = bool(settings["add_bos_token"][0])
        tok.add_bos = tok.add_bos and tok.bos_id is not None
        return tok

    def __repr__(self) -> str:
        return (f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, add_bos={self.add_bos})")
