"""Tokenizers: a vocabulary of byte pieces with merge scores (BPE), with byte fallback.

One class covers both kinds the twin meets:

- the twin's own tokenizers (trained by twin/model/train.py): ids 0/1/2 are BOS/EOS/PAD, byte b is id
  b + 3 (exactly the byte-level tokenizer of twin.model.modelgen), ids from 259 on are merged pieces;
  text is split into words first (GPT-2 style: a word keeps its leading space) and each word is
  merged pair by pair in merge order (``pretokenize=True``);
- llama2.c's ``tokenizer.bin`` (sentencepiece vocabularies exported by llama2.c): the text gets a
  leading space, each UTF-8 character that is a piece becomes that piece, other bytes fall back to the
  ``<0xXX>`` pieces, then the adjacent pair whose concatenation has the highest score is merged
  until none is left — llama2.c's ``encode()``.

Both decode by concatenating the pieces' bytes (special tokens vanish).

Hugging Face ``tokenizer.json`` files are run by the ``tokenizers`` library behind the same interface
(twin/model/tokenizer_hf.py). ``load_tokenizer(path)`` reads any of the three kinds of file, and
``tokenizer_from_json()`` any tokenizer stored by ``to_json()`` (dispatching on its ``format`` tag).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# Words with their leading space, digit runs, punctuation runs, whitespace runs.
PRETOKEN = re.compile(rb" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


class TokenizerError(ValueError):
    """A tokenizer file is malformed."""


@dataclass
class Tokenizer:
    pieces: list[bytes]                 # id -> bytes (special tokens: b"")
    scores: list[float]                 # merge priority: higher merges first
    bos_id: int = 0
    eos_id: int = 1
    byte_ids: list[int] = field(default_factory=list)   # byte b -> id (256 entries)
    pretokenize: bool = True            # twin style (True) or llama2.c style (False)
    special: frozenset[int] = frozenset()
    name: str = "bpe"

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.scores):
            raise TokenizerError("pieces and scores differ in length")
        if len(self.byte_ids) != 256:
            raise TokenizerError("a tokenizer needs one byte-fallback id for each of the 256 bytes")
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            if i not in self.special and p and p not in self._lookup:
                self._lookup[p] = i
        for b, i in enumerate(self.byte_ids):   # byte pieces may be spelt "<0xXX>" (llama2.c)
            self._lookup.setdefault(bytes([b]), i)
        self._cache: dict[bytes, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    # ------------------------------------------------------------------ encode

    def _merge(self, ids: list[int]) -> list[int]:
        pieces, scores, lookup = self.pieces, self.scores, self._lookup
        text = [self._bytes(i) for i in ids]
        while len(ids) > 1:
            best, best_score, best_id = -1, float("-inf"), -1
            for k in range(len(ids) - 1):
                j = lookup.get(text[k] + text[k + 1])
                if j is not None and scores[j] > best_score:
                    best, best_score, best_id = k, scores[j], j
            if best < 0:
                break
            ids[best: best + 2] = [best_id]
            text[best: best + 2] = [pieces[best_id]]
        return ids

    def _chars(self, data: bytes) -> list[int]:
        """Each UTF-8 character that is a piece, else its bytes (llama2.c's first step)."""
        out: list[int] = []
        for ch in data.decode("utf-8", errors="surrogateescape"):
            b = ch.encode("utf-8", errors="surrogateescape")
            i = self._lookup.get(b)
            out.extend([i] if i is not None else [self.byte_ids[x] for x in b])
        return out

    def encode(self, text: str, bos: bool = True) -> list[int]:
        data = text.encode("utf-8")
        out = [self.bos_id] if bos else []
        if self.pretokenize:
            for m in PRETOKEN.finditer(data):
                word = m.group()
                ids = self._cache.get(word)
                if ids is None:
                    ids = self._merge([self.byte_ids[b] for b in word])
                    if len(self._cache) < 100_000:
                        self._cache[word] = ids
                out.extend(ids)
            return out
        if data:
            data = b" " + data   # sentencepiece's dummy prefix, as llama2.c adds it
        return out + self._merge(self._chars(data))

    # ------------------------------------------------------------------ decode

    def _bytes(self, i: int) -> bytes:
        p = self.pieces[i]
        m = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", p)
        return bytes([int(m.group(1), 16)]) if m else p

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        prev = self.bos_id
        for i in ids:
            if i in self.special or not 0 <= i < len(self.pieces):
                prev = i
                continue
            b = self._bytes(i)
            if not self.pretokenize and prev == self.bos_id and b.startswith(b" "):
                b = b[1:]     # llama2.c strips the dummy prefix after BOS
            out += b
            prev = i
        return out.decode("utf-8", errors="replace")

    # -------------------------------------------------------------- formats

    def to_json(self) -> str:
        return json.dumps({
            "format": "twin-tokenizer-1", "name": self.name, "bos_id": self.bos_id, "eos_id": self.eos_id,
            "pretokenize": self.pretokenize, "special": sorted(self.special), "byte_ids": self.byte_ids,
            "pieces": [p.hex() for p in self.pieces], "scores": self.scores})

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        try:
            d = json.loads(text)
            if d.get("format") != "twin-tokenizer-1":
                raise TokenizerError(f"unknown tokenizer format {d.get('format')!r}")
            return cls(pieces=[bytes.fromhex(p) for p in d["pieces"]], scores=[float(s) for s in d["scores"]],
                       bos_id=int(d["bos_id"]), eos_id=int(d["eos_id"]), byte_ids=[int(i) for i in d["byte_ids"]],
                       pretokenize=bool(d["pretokenize"]), special=frozenset(int(i) for i in d["special"]),
                       name=str(d.get("name", "bpe")))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TokenizerError):
                raise
            raise TokenizerError(f"malformed tokenizer: {exc}") from None

    def to_llama2c(self) -> bytes:
        """llama2.c's tokenizer.bin: int32 max_token_length, then per id: f32 score, i32 len, bytes."""
        out = [struct.pack("<i", max(len(p) for p in self.pieces))]
        for p, s in zip(self.pieces, self.scores, strict=True):
            out.append(struct.pack("<fi", s, len(p)) + p)
        return b"".join(out)


def byte_level_tokenizer(vocab_size: int = 259) -> Tokenizer:
    """The twin's byte-level scheme (BOS 0, EOS 1, PAD 2, byte b = b + 3) as a Tokenizer."""
    pieces = [b"", b"", b""] + [bytes([b]) for b in range(256)]
    pieces += [b""] * max(0, vocab_size - len(pieces))
    return Tokenizer(pieces=pieces, scores=[0.0] * len(pieces), bos_id=0, eos_id=1,
                     byte_ids=list(range(3, 259)), special=frozenset({0, 1, 2}), name="bytes")


def load_llama2c_tokenizer(data: bytes | str | Path, vocab_size: int | None = None) -> Tokenizer:
    """Read llama2.c's tokenizer.bin. Its vocabulary size is not stored in the file: pass the model's
    (the file must then hold exactly that many entries), or every entry up to the end is read."""
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    if len(data) < 4:
        raise TokenizerError("tokenizer.bin is truncated: no header")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if not 0 < max_len < 1 << 16:
        raise TokenizerError(f"tokenizer.bin: implausible max_token_length {max_len}")
    pieces, scores, off = [], [], 4
    while off < len(data) and (vocab_size is None or len(pieces) < vocab_size):
        if off + 8 > len(data):
            raise TokenizerError(f"tokenizer.bin is truncated in entry {len(pieces)}")
        score, n = struct.unpack_from("<fi", data, off)
        if not 0 <= n <= max_len or off + 8 + n > len(data):
            raise TokenizerError(f"tokenizer.bin is truncated or corrupt in entry {len(pieces)}")
        pieces.append(data[off + 8: off + 8 + n])
        scores.append(score)
        off += 8 + n
    if vocab_size is not None and (len(pieces) != vocab_size or off != len(data)):
        raise TokenizerError(f"tokenizer.bin holds {len(pieces)} entries{' and more' if off < len(data) else ''}, "
                             f"the model's vocabulary has {vocab_size}")
    lookup = {p: i for i, p in enumerate(pieces)}
    byte_ids = []
    for b in range(256):
        i = lookup.get(f"<0x{b:02X}>".encode(), lookup.get(bytes([b])))
        if i is None:
            i = b + 3 if b + 3 < len(pieces) else 0   # llama2.c's fallback: byte + 3
        byte_ids.append(i)
    special = frozenset(i for i in (0, 1, 2) if i < len(pieces) and pieces[i].startswith(b"<")
                        and pieces[i].endswith(b">"))
    return Tokenizer(pieces=pieces, scores=scores, bos_id=1, eos_id=2, byte_ids=byte_ids, pretokenize=False,
                     special=special, name="llama2c")


def tokenizer_from_json(text: str):
    """A tokenizer stored as JSON (in a twin .npz or an image's sidecar), by its ``format`` tag: the
    twin's own (``twin-tokenizer-1``) or a Hugging Face tokenizer.json (``hf-tokenizers-1``,
    twin.model.tokenizer_hf)."""
    try:
        fmt = json.loads(text).get("format")
    except (ValueError, AttributeError) as exc:
        raise TokenizerError(f"malformed tokenizer: {exc}") from None
    if fmt == "hf-tokenizers-1":
        from twin.model.tokenizer_hf import HFTokenizer

        return HFTokenizer.from_json(text)
    return Tokenizer.from_json(text)


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """Any tokenizer file the twin reads, by content: a Hugging Face ``tokenizer.json`` (BOS/EOS also from
    tokenizer_config.json beside it), the twin's own tokenizer JSON, or llama2.c's ``tokenizer.bin``.
    With ``vocab_size`` (the model's), a tokenizer with more ids than the model is an error (fewer is
    fine: padded embeddings); a tokenizer.bin must hold exactly that many. Every failure is a
    TokenizerError whose message names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read the tokenizer ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".bin" or (suffix != ".json" and data.lstrip()[:1] != b"{"):
        try:
            return load_llama2c_tokenizer(data, vocab_size)
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from None
    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenizerError(f"{path}: not valid JSON, probably truncated or corrupt ({exc}); re-download "
                             "it or re-save it with the tool that wrote it") from None
    if isinstance(d, dict) and d.get("format") == "twin-tokenizer-1":
        try:
            tok = Tokenizer.from_json(data.decode("utf-8"))
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from None
    elif isinstance(d, dict) and "model" in d:
        from twin.model.tokenizer_hf import HFTokenizer

        tok = HFTokenizer.from_file(path)
    else:
        raise TokenizerError(f"{path}: neither a Hugging Face tokenizer.json (it has no 'model' entry) nor the "
                             "twin's tokenizer JSON; use the tokenizer.json saved with the model")
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise TokenizerError(f"{path}: the tokenizer has {tok.vocab_size} token ids, more than the model's "
                             f"vocabulary of {vocab_size}; use the tokenizer that belongs to this model")
    return tok


def sidecar_path(image: Path) -> Path:
    """Where `twin image` puts the tokenizer of a model image: ``<image>.tokenizer.json``."""
    return image.with_name(image.name + ".tokenizer.json")


def sidecar_tokenizer(image: Path):
    p = sidecar_path(image)
    if not p.is_file():
        return None
    try:
        return tokenizer_from_json(p.read_text(encoding="utf-8"))
    except (TokenizerError, OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{p}: {exc}; write it again with `twin image`, or delete it for byte-level "
                             "text") from None
