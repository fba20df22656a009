"""Train the built-in models on Jane Austen's six novels (public domain), reproducibly, on the CPU.

    python -m twin.model.train                 # both models into models/ (about 12 minutes on 2 cores)
    python -m twin.model.train --only 260k     # one of them

The corpus comes from the Debian package r-cran-janeaustenr (see models/README.md): the script runs
``apt-get download`` for it unless ``--corpus-deb`` names the .deb, and reads the novels out of the R
lazy-load database in it (decoded here: zlib chunks holding R-serialized character vectors).
Needs PyTorch (``pip install -e '.[parity]'``). Fixed seeds and fixed thread count: the same machine
type gives the same weights.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import re
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.model.modelgen import FloatModel, LayerWeights, ModelConfig, rope_frequencies
from twin.model.tokenizer import PRETOKEN, Tokenizer
from twin.platforms import ROOT

MODELS = ROOT / "models"
DEB = "r-cran-janeaustenr"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"   # 1.0.0-1, Debian 12
NOVELS = ("Emma", "Mansfield Park", "Northanger Abbey", "Persuasion", "Pride and Prejudice",
          "Sense and Sensibility")   # in the order of the package's lazy-load database
HELDOUT_FRACTION = 0.02              # the last 2% of each novel's paragraphs
VOCAB = 512


# ------------------------------------------------------------------ corpus


def _deb_member(deb: bytes, suffix: str) -> bytes:
    """A file of a .deb (an ar archive holding data.tar.*)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar) archive")
    off = 8
    while off + 60 <= len(deb):
        name = deb[off:off + 16].decode().strip().rstrip("/")
        size = int(deb[off + 48:off + 58].decode().strip())
        body = deb[off + 60:off + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(suffix):
                        f = tar.extractfile(m)
                        assert f is not None
                        return f.read()
        off += 60 + size + (size & 1)
    raise ValueError(f"{suffix} not found in the package")


def _r_strings(blob: bytes) -> list[str]:
    """An R-serialized (XDR, version 2 or 3) character vector without attributes."""
    if blob[:2] != b"X\n":
        raise ValueError("not an XDR R serialization")
    version = struct.unpack_from(">i", blob, 2)[0]
    off = 14
    if version == 3:
        (n,) = struct.unpack_from(">i", blob, off)
        off += 4 + n
    flags, length = struct.unpack_from(">ii", blob, off)
    if flags & 0xFF != 16 or flags & (1 << 9):
        raise ValueError("expected a plain character vector")
    off += 8
    out = []
    for _ in range(length):
        _, n = struct.unpack_from(">ii", blob, off)
        off += 8
        out.append("" if n < 0 else blob[off:off + n].decode("utf-8"))
        off += max(n, 0)
    return out


def load_novels(deb_path: Path | None = None) -> dict[str, list[str]]:
    """Novel title -> its paragraphs (the package's wrapped lines joined)."""
    if deb_path is None:
        with tempfile.TemporaryDirectory(prefix="twin-corpus-") as tmp:
            subprocess.run(["apt-get", "download", DEB], cwd=tmp, check=True, capture_output=True)
            deb_path = next(Path(tmp).glob(f"{DEB}_*.deb"))
            deb = deb_path.read_bytes()
    else:
        deb = deb_path.read_bytes()
    digest = hashlib.sha256(deb).hexdigest()
    if digest != DEB_SHA256:
        print(f"warning: {deb_path.name} has SHA-256 {digest}, the models were trained on {DEB_SHA256}",
              flush=True)
    rdb = _deb_member(deb, "janeaustenr/data/Rdata.rdb")
    novels, off = {}, 0
    for title in NOVELS:
        d = zlib.decompressobj()
        blob = d.decompress(rdb[off + 4:])
        off = len(rdb) - len(d.unused_data)
        paras, cur = [], []
        for line in _r_strings(blob):
            if line.strip():
                cur.append(line.strip())
            elif cur:
                paras.append(" ".join(cur))
                cur = []
        if cur:
            paras.append(" ".join(cur))
        novels[title] = [_clean(p) for p in paras if not re.fullmatch(r"(CHAPTER|VOLUME|Chapter) [0-9IVXLC]+\.?", p)]
    return novels


def _clean(p: str) -> str:
    p = p.replace("_", "")          # Gutenberg's _italics_ marks
    return re.sub(r"\s+", " ", p).strip()


def split_corpus(novels: dict[str, list[str]]) -> tuple[str, str]:
    """Training text and held-out text (the last paragraphs of each novel), one paragraph a line."""
    train, held = [], []
    for paras in novels.values():
        k = len(paras) - max(1, int(len(paras) * HELDOUT_FRACTION))
        train += paras[:k]
        held += paras[k:]
    return "\n".join(train) + "\n", "\n".join(held) + "\n"


# --------------------------------------------------------------- tokenizer


def train_bpe(text: str, vocab_size: int = VOCAB) -> Tokenizer:
    """Byte-level BPE on top of the twin's byte scheme: ids 259.. are merges, in merge order."""
    words = Counter(m.group() for m in PRETOKEN.finditer(text.encode("utf-8")))
    seqs = {w: [bytes([b]) for b in w] for w in words}
    pieces = [b"", b"", b""] + [bytes([b]) for b in range(256)]
    scores = [0.0] * len(pieces)
    while len(pieces) < vocab_size:
        pairs: Counter = Counter()
        for w, s in seqs.items():
            n = words[w]
            for a, b in zip(s, s[1:], strict=False):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        new = a + b
        rank = len(pieces) - 259
        pieces.append(new)
        scores.append(-float(rank))
        for w, s in seqs.items():
            if len(s) < 2:
                continue
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    for i in range(259):
        scores[i] = float("-inf") if i < 3 else 0.0
    scores = [-1e9 if s == float("-inf") else s for s in scores]
    return Tokenizer(pieces=pieces, scores=scores, bos_id=0, eos_id=1, byte_ids=list(range(3, 259)),
                     special=frozenset({0, 1, 2}), name=f"austen-bpe{len(pieces)}")


# ------------------------------------------------------------------- model


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    steps: int
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 1337


BUILTIN = {
    "260k": TrainConfig(ModelConfig(name="austen-260k"), steps=2000),
    "1m": TrainConfig(ModelConfig(dim=128, hidden_dim=344, n_layers=6, n_heads=8, n_kv_heads=4, seq_len=128,
                                  name="austen-1m"), steps=1000, lr=1.5e-3),
}


def _torch_model(c: ModelConfig):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class RMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(c.dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps) * self.weight

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm, self.ffn_norm = RMSNorm(), RMSNorm()
            self.wq = nn.Linear(c.dim, c.dim, bias=False)
            self.wk = nn.Linear(c.dim, c.kv_dim, bias=False)
            self.wv = nn.Linear(c.dim, c.kv_dim, bias=False)
            self.wo = nn.Linear(c.dim, c.dim, bias=False)
            self.w1 = nn.Linear(c.dim, c.hidden_dim, bias=False)
            self.w2 = nn.Linear(c.hidden_dim, c.dim, bias=False)
            self.w3 = nn.Linear(c.dim, c.hidden_dim, bias=False)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            h = self.attn_norm(x)
            q = self.wq(h).view(b, t, c.n_heads, c.head_size)
            k = self.wk(h).view(b, t, c.n_kv_heads, c.head_size)
            v = self.wv(h).view(b, t, c.n_kv_heads, c.head_size)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            rep = c.n_heads // c.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True)
            x = x + self.wo(a.transpose(1, 2).reshape(b, t, c.dim))
            h = self.ffn_norm(x)
            return x + self.w2(F.silu(self.w1(h)) * self.w3(h))

    def rope(x, cos, sin):   # interleaved pairs, as the firmware
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)

    class Llama(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
            self.layers = nn.ModuleList(Block() for _ in range(c.n_layers))
            self.final_norm = RMSNorm()
            freq = torch.from_numpy(rope_frequencies(c.head_size).astype(np.float64))
            ang = torch.arange(c.seq_len, dtype=torch.float64)[:, None] * freq[None, :]
            self.register_buffer("cos", torch.cos(ang).float()[None, :, None, :], persistent=False)
            self.register_buffer("sin", torch.sin(ang).float()[None, :, None, :], persistent=False)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * c.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx):
            t = idx.shape[1]
            x = self.tok_emb(idx)
            for layer in self.layers:
                x = layer(x, self.cos[:, :t], self.sin[:, :t])
            return self.final_norm(x) @ self.tok_emb.weight.T

    return Llama()


def to_float_model(net, c: ModelConfig, tokenizer: Tokenizer | None) -> FloatModel:
    def a(t) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    layers = [LayerWeights(attn_norm=a(b.attn_norm.weight), wq=a(b.wq.weight), wk=a(b.wk.weight),
                           wv=a(b.wv.weight), wo=a(b.wo.weight), ffn_norm=a(b.ffn_norm.weight),
                           w1=a(b.w1.weight), w2=a(b.w2.weight), w3=a(b.w3.weight)) for b in net.layers]
    return FloatModel(config=c, tok_emb=a(net.tok_emb.weight), layers=layers, final_norm=a(net.final_norm.weight),
                      rope_freq=rope_frequencies(c.head_size), tokenizer=tokenizer)


def _batches(stream: np.ndarray, starts: np.ndarray, c: ModelConfig, batch: int, rng: np.random.Generator):
    """[BOS] + seq_len tokens from a paragraph start; targets shifted by one."""
    n = c.seq_len
    while True:
        s = starts[rng.integers(0, len(starts), batch)]
        x = np.stack([np.concatenate([[0], stream[i:i + n]]) for i in s])
        yield x[:, :-1], x[:, 1:]


def encode_paragraphs(tok: Tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """The token stream (paragraphs joined by newlines) and where each paragraph starts."""
    ids, starts = [], []
    for para in text.splitlines():
        starts.append(len(ids))
        ids += tok.encode(para + "\n", bos=False)
    return np.array(ids, dtype=np.int64), np.array(starts, dtype=np.int64)


def evaluate(net, c: ModelConfig, stream: np.ndarray) -> float:
    """Mean cross-entropy (nats/token) over the stream cut into [BOS] + seq_len windows."""
    import torch
    from torch.nn import functional as F

    n = c.seq_len
    k = (len(stream) // n) * n
    windows = stream[:k].reshape(-1, n)
    x = np.concatenate([np.zeros((len(windows), 1), dtype=np.int64), windows], axis=1)
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), 64):
            xb = torch.from_numpy(x[i:i + 64])
            logits = net(xb[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size), xb[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += xb[:, 1:].numel()
    net.train()
    return total / count


def train(key: str, tok: Tokenizer, train_text: str, held_text: str, log=None) -> tuple[FloatModel, dict]:
    import torch
    from torch.nn import functional as F

    log = log or functools.partial(print, flush=True)
    tc = BUILTIN[key]
    c = tc.model
    torch.manual_seed(tc.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(tc.seed)
    stream, starts = encode_paragraphs(tok, train_text)
    starts = starts[starts + c.seq_len <= len(stream)]
    held, _ = encode_paragraphs(tok, held_text)
    net = _torch_model(c)
    decay = [p for p in net.parameters() if p.dim() == 2]
    other = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))
    batches = _batches(stream, starts, c, tc.batch, rng)
    curve, started, ema = [], time.perf_counter(), None
    for step in range(1, tc.steps + 1):
        lr = tc.lr * min(1.0, step / tc.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / tc.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        logits = net(torch.from_numpy(x))
        loss = F.cross_entropy(logits.reshape(-1, c.vocab_size), torch.from_numpy(y).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        if step % 100 == 0 or step == tc.steps:
            curve.append({"step": step, "train_loss": round(ema, 4), "seconds": round(time.perf_counter() - started, 1)})
            log(f"{key} step {step}/{tc.steps} loss {ema:.3f} lr {lr:.2e} {time.perf_counter() - started:.0f}s")
    seconds = time.perf_counter() - started
    model = to_float_model(net, c, tok)
    # evaluate the weights as stored (float16), loaded back
    for p in net.parameters():
        p.data = p.data.half().float()
    held_nll = evaluate(net, c, held)
    n_params = sum(p.numel() for p in net.parameters())
    stats = {"model": c.name, "parameters": n_params, "steps": tc.steps, "batch": tc.batch,
             "train_seconds": round(seconds, 1), "train_tokens": int(len(stream)),
             "heldout_tokens": int(len(held)), "heldout_nll": round(held_nll, 4),
             "heldout_ppl_per_token": round(math.exp(held_nll), 3),
             "heldout_bits_per_byte": round(held_nll * len(held) / math.log(2) / len(held_text.encode()), 4),
             "curve": curve}
    log(f"{key}: {n_params} parameters, {seconds:.0f} s, held-out perplexity {math.exp(held_nll):.2f}/token")
    return model, stats


def main(argv: list[str] | None = None) -> None:
    from twin.model.importers.npz import save_npz

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(BUILTIN), action="append")
    ap.add_argument("--corpus-deb", type=Path, help="r-cran-janeaustenr .deb (default: apt-get download)")
    ap.add_argument("--out", type=Path, default=MODELS)
    args = ap.parse_args(argv)
    novels = load_novels(args.corpus_deb)
    train_text, held_text = split_corpus(novels)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout.txt").write_text(held_text)
    t0 = time.perf_counter()
    tok = train_bpe(train_text)
    print(f"tokenizer: {tok.vocab_size} pieces in {time.perf_counter() - t0:.0f} s")
    (args.out / "tokenizer.json").write_text(tok.to_json())
    all_stats = {}
    stats_path = args.out / "training.json"
    if stats_path.exists():
        all_stats = json.loads(stats_path.read_text())
    for key in args.only or sorted(BUILTIN):
        model, stats = train(key, tok, train_text, held_text)
        save_npz(model, args.out / f"{model.config.name}.npz")
        all_stats[key] = stats
        stats_path.write_text(json.dumps(all_stats, indent=1) + "\n")


if __name__ == "__main__":
    main()
