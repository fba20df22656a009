"""ONNX graphs of Llama-style decoders (as torch.onnx.export writes them), read with the ``onnx`` package.

Weights are found by the graph's structure, not by initializer names:

- the token embedding is the constant matrix a Gather reads rows of;
- a linear layer is a MatMul (or Gemm) with a constant matrix operand (through Transpose/Cast/Identity);
- an RMSNorm is a Mul by a constant vector of length dim whose other operand is x / sqrt(mean(x²) + eps)
  (or an RMSNormalization / SimplifiedLayerNormalization node); the linears it feeds belong to it;
- after each layer's attention norm come q, k and v: v is the one the Softmax does not depend on, q and
  k are the first and second operand of the score MatMul that feeds the Softmax; o is the norm-less
  linear before the FFN norm; after the FFN norm the gate is the linear whose output feeds the Sigmoid
  (silu = x·sigmoid(x)) and the other is up; down is the norm-less linear after them; the classifier is
  fed by the final norm (shared when its matrix equals the embedding);
- head count from the Reshape of q (…, n_heads, head_size), RoPE layout (interleaved pairs or rotate-half)
  from the slicing around q/k, eps from the norm's Add;
- the per-pair RoPE frequencies (θ, or a scaled RoPE's) from a constant angle table feeding Cos/Sin
  (t * inv_freq, as TorchScript folds transformers' rotary embedding), the inv_freq vector the angles are
  computed from, or constant cos and sin tables (whose rows also give the context); a graph with none of
  them is refused unless the caller names rope_theta.

Anything else (biases, LayerNorm, GELU, fused QKV, quantized initializers, unknown ops) is a
ModelFileError that names it. The tokenizer is a tokenizer.json beside the .onnx file (as Hugging Face
exporters write it), if there is one.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from twin.model.importers.common import ModelFileError, build_model, find_tokenizer
from twin.model.importers.hf import unpermute_rope
from twin.model.importers.rope import describe
from twin.model.modelgen import FloatModel, ModelConfig, rope_frequencies

SUPPORTED_OPS = {
    "Gather", "MatMul", "Gemm", "Mul", "Add", "Sub", "Div", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "Neg",
    "Sigmoid", "Softmax", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Shape", "Slice", "Concat", "Constant",
    "ConstantOfShape", "Cast", "CastLike", "Identity", "Split", "Expand", "Where", "Equal", "Range", "Trilu", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "Tile", "Sin", "Cos", "Max", "Min", "Flatten", "And", "Or", "Not",
    "IsNaN", "IsInf", "Mod", "Floor", "Size", "Sum", "RMSNormalization", "SimplifiedLayerNormalization", "Silu",
    "Swish", "GatherElements", "ScatterND", "CumSum", "Abs", "Exp", "Log", "Clip", "Dropout", "Rsqrt",
}
UNSUPPORTED_HINT = {
    "LayerNormalization": "LayerNorm (the twin's decoders use RMSNorm)",
    "Gelu": "GELU activation (only SwiGLU)", "Relu": "ReLU activation (only SwiGLU)",
    "Tanh": "tanh activation (only SwiGLU)", "Erf": "erf / GELU activation (only SwiGLU)",
    "MatMulInteger": "quantized MatMulInteger", "QLinearMatMul": "quantized QLinearMatMul",
    "DequantizeLinear": "quantized weights (DequantizeLinear)", "Conv": "convolutions",
}
_PASS = ("Identity", "Cast", "CastLike", "Dropout")


class _Graph:
    def __init__(self, model, where: str):
        from onnx import numpy_helper

        self.where = where
        g = model.graph
        self.nodes = list(g.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self.consts[t.name] = self._array(t, numpy_helper)
        self.producer = {}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = self._array(a.t, numpy_helper)
                    elif a.name == "value_float":
                        self.consts[n.output[0]] = np.array(a.f, dtype=np.float32)
                    elif a.name == "value_floats":
                        self.consts[n.output[0]] = np.array(a.floats, dtype=np.float32)
                    elif a.name == "value_int":
                        self.consts[n.output[0]] = np.array(a.i, dtype=np.int64)
                    elif a.name == "value_ints":
                        self.consts[n.output[0]] = np.array(a.ints, dtype=np.int64)

    def _array(self, t, numpy_helper) -> np.ndarray:
        try:
            return numpy_helper.to_array(t)
        except Exception as exc:
            raise ModelFileError(f"{self.where}: tensor {t.name!r} is unreadable: unsupported dtype or "
                                 f"missing/truncated data ({exc})") from None

    def attr(self, node, name: str, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def const(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The constant value of a tensor, through Identity/Cast/Transpose; None if it is computed."""
        if name in self.consts:
            return self.consts[name]
        n = self.producer.get(name)
        if n is None or depth > 8:
            return None
        if n.op_type in _PASS:
            return self.const(n.input[0], depth + 1)
        if n.op_type == "Transpose":
            v = self.const(n.input[0], depth + 1)
            if v is None:
                return None
            perm = self.attr(n, "perm")
            return np.transpose(v, perm) if perm else v.T
        return None

    def ancestors(self, names: list[str], stop: set | None = None) -> set[int]:
        """Indices of the nodes the given tensors depend on."""
        seen: set[int] = set()
        todo = deque(names)
        while todo:
            n = self.producer.get(todo.popleft())
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            if stop and id(n) in stop:
                continue
            todo.extend(n.input)
        return seen

    def descendants(self, name: str, limit: int = 10_000) -> list:
        out, seen, todo = [], set(), deque([name])
        while todo and len(out) < limit:
            for n in self.consumers.get(todo.popleft(), []):
                if id(n) not in seen:
                    seen.add(id(n))
                    out.append(n)
                    todo.extend(n.output)
        return out

    def shape_tail(self, name: str) -> list[int | None]:
        """A Reshape target: constant, or a Concat of pieces of which some are constant."""
        v = self.const(name)
        if v is not None:
            return [int(x) for x in np.asarray(v).reshape(-1)]
        n = self.producer.get(name)
        if n is not None and n.op_type == "Concat":
            out: list[int | None] = []
            for i in n.input:
                c = self.const(i)
                out += [int(x) for x in np.asarray(c).reshape(-1)] if c is not None else [None]
            return out
        return []


class _Linear:
    def __init__(self, node, weight: np.ndarray, x: str, pos: int):
        self.node, self.weight, self.x, self.pos = node, weight, x, pos   # weight (out, in)
        self.out = node.output[0]
        self.norm: _Norm | None = None


class _Norm:
    def __init__(self, node, weight: np.ndarray, x: str, pos: int, eps: float | None):
        self.node, self.weight, self.x, self.pos, self.eps = node, weight, x, pos, eps
        self.linears: list[_Linear] = []


def _find_linears(g: _Graph) -> list[_Linear]:
    out = []
    for pos, n in enumerate(g.nodes):
        if n.op_type == "MatMul":
            b = g.const(n.input[1])
            if b is not None and b.ndim == 2:
                out.append(_Linear(n, b.T, n.input[0], pos))
        elif n.op_type == "Gemm":
            b = g.const(n.input[1])
            if b is None or b.ndim != 2 or g.attr(n, "transA", 0):
                raise ModelFileError(f"{g.where}: unsupported Gemm {n.name!r} (need x·Wᵀ with a constant W)")
            if len(n.input) > 2 and n.input[2]:
                c = g.const(n.input[2])
                if c is None or np.any(c != 0):
                    raise ModelFileError(f"{g.where}: unsupported bias on linear layer {n.name!r}")
            out.append(_Linear(n, b if g.attr(n, "transB", 0) else b.T, n.input[0], pos))
    for lin in out:
        for c in g.consumers.get(lin.out, []):
            if c.op_type == "Add" and any((v := g.const(i)) is not None and v.ndim == 1 and np.any(v != 0)
                                          for i in c.input):
                raise ModelFileError(f"{g.where}: unsupported bias on linear layer {lin.node.name!r}")
    return out


def _norm_eps(g: _Graph, x_name: str, norm_mul) -> tuple[bool, float | None]:
    """Whether the path into a norm's Mul is x / sqrt(mean(x²) + eps), and eps."""
    anc = [g.nodes[i] for i in range(len(g.nodes)) if id(g.nodes[i]) in g.ancestors([x_name])]
    recent = [n for n in anc if g.index[id(n)] > g.index[id(norm_mul)] - 16]
    ops = {n.op_type for n in recent}
    if "ReduceMean" not in ops or not ops & {"Sqrt", "Rsqrt", "Reciprocal", "Pow", "Div"}:
        return False, None
    if "Sub" in ops:   # mean subtraction: LayerNorm written out
        subs = [n for n in recent if n.op_type == "Sub" and all(g.const(i) is None for i in n.input)]
        if subs:
            raise ModelFileError(f"{g.where}: unsupported LayerNorm (mean-subtracting norm at {norm_mul.name!r}); "
                                 "the twin's decoders use RMSNorm")
    eps = None
    for n in reversed(recent):
        if n.op_type == "Add":
            for i in n.input:
                v = g.const(i)
                if v is not None and v.size == 1 and 0 < float(v.reshape(-1)[0]) < 1e-2:
                    eps = float(f"{float(v.reshape(-1)[0]):.7g}")   # 1e-5 back from float32
                    break
        if eps is not None:
            break
    return True, eps


def _find_norm(g: _Graph, lin: _Linear, dim: int, cache: dict) -> _Norm | None:
    name, hops = lin.x, 0
    while hops < 6:
        n = g.producer.get(name)
        if n is None:
            return None
        if id(n) in cache:
            return cache[id(n)]
        if n.op_type in _PASS or n.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Flatten"):
            name, hops = n.input[0], hops + 1
            continue
        if n.op_type in ("RMSNormalization", "SimplifiedLayerNormalization"):
            w = g.const(n.input[1])
            norm = _Norm(n, w, n.input[0], g.index[id(n)], g.attr(n, "epsilon", 1e-5))
            cache[id(n)] = norm
            return norm
        if n.op_type == "Mul":
            for k in (0, 1):
                w = g.const(n.input[k])
                if w is not None and w.ndim == 1 and w.shape[0] == dim:
                    ok, eps = _norm_eps(g, n.input[1 - k], n)
                    if ok:
                        norm = _Norm(n, w, n.input[1 - k], g.index[id(n)], eps)
                        cache[id(n)] = norm
                        return norm
        return None
    return None


def _rope_layout(g: _Graph, outputs: list[str], stop_pos: int, head_size: int) -> str:
    """'interleaved' or 'half' from the slicing between the q/k projections and the score MatMul."""
    interleaved = half = False
    for out in outputs:
        for n in g.descendants(out, limit=200):
            if g.index[id(n)] > stop_pos:
                continue
            if n.op_type == "Slice":   # on the last axis of the (batch, seq, heads, head_size) tensor
                starts = g.const(n.input[1]) if len(n.input) > 1 else None
                axes = g.const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
                steps = g.const(n.input[4]) if len(n.input) > 4 and n.input[4] else None
                if axes is None or not set(np.asarray(axes).reshape(-1).tolist()) <= {-1, 3}:
                    continue
                if steps is not None and np.any(np.asarray(steps) == 2):
                    interleaved = True
                elif starts is not None and np.any(np.asarray(starts) == head_size // 2):
                    half = True
            elif n.op_type == "Reshape" and g.shape_tail(n.input[1])[-1:] == [2]:
                interleaved = True
            elif n.op_type == "Split":
                parts = g.const(n.input[1]) if len(n.input) > 1 and n.input[1] else g.attr(n, "split")
                if parts is not None and list(np.asarray(parts).reshape(-1)) == [head_size // 2] * 2:
                    half = True
    if interleaved == half:
        raise ModelFileError(f"{g.where}: could not recognise the RoPE layout (interleaved pairs or rotate-half) "
                             "around the q/k projections")
    return "interleaved" if interleaved else "half"


def _rope_freqs(g: _Graph, head_size: int) -> tuple[np.ndarray | None, int | None]:
    """The per-pair RoPE frequencies and the table's rows (positions) from what the graph holds: a constant
    angle table feeding Cos/Sin (angle[t, i] = t * inv_freq[i], as TorchScript folds transformers' rotary
    embedding), the inv_freq vector the computed angles come from, or constant cos and sin tables.
    (None, None) when there is none; anything that is there but does not read as RoPE is a ModelFileError."""
    from twin.model.importers.rope import freqs_from_angles, freqs_from_cos_sin, pair_columns

    n = head_size // 2
    found: list[tuple[np.ndarray, int | None, str]] = []
    for node in g.nodes:
        if node.op_type not in ("Cos", "Sin"):
            continue
        angle = g.const(node.input[0])
        if angle is not None:
            a = np.asarray(angle, dtype=np.float64)
            f = freqs_from_angles(a.reshape(-1, a.shape[-1])) if a.ndim >= 2 else None
            f = pair_columns(f, head_size) if f is not None else None
            if f is None:
                raise ModelFileError(f"{g.where}: the constant table {tuple(a.shape)} feeding {node.op_type} "
                                     f"{node.name!r} is not angle[t, i] = t * inv_freq[i] for head size {head_size}; "
                                     "cannot read the RoPE frequencies")
            found.append((f, int(np.prod(a.shape[:-1])), f"the angle table feeding {node.op_type} {node.name!r}"))
            continue
        anc = g.ancestors([node.input[0]])
        cands = []
        for m in g.nodes:
            if id(m) not in anc:
                continue
            for i in m.input:
                v = g.const(i) if i else None
                if v is None or v.dtype.kind != "f" or v.size not in (n, head_size) or v.size < 2:
                    continue
                f = np.asarray(v, dtype=np.float64).reshape(-1)
                if np.all(np.isfinite(f)) and np.all(f > 0) and np.all(f <= 1.0) and np.all(np.diff(f) <= 0):
                    f = pair_columns(f, head_size)
                    if f is not None and not any(np.array_equal(f, c) for c in cands):
                        cands.append(f)
        if len(cands) > 1:
            raise ModelFileError(f"{g.where}: {len(cands)} candidate inv_freq vectors feed {node.op_type} "
                                 f"{node.name!r}; cannot tell which are the RoPE frequencies")
        if cands:
            found.append((cands[0], None, f"the inv_freq vector feeding {node.op_type} {node.name!r}"))
    if not found:   # no Cos/Sin in the graph: constant cos and sin tables (rows: positions)
        tables = []
        for v in g.consts.values():
            if v.dtype.kind != "f" or v.ndim < 2 or v.shape[-1] not in (n, head_size):
                continue
            a = np.asarray(v, dtype=np.float64).reshape(-1, v.shape[-1])
            if a.shape[0] >= 2 and np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0 + 1e-6):
                tables.append(a)
        for cos in (t for t in tables if np.allclose(t[0], 1.0)):
            sins = [t for t in tables if t.shape == cos.shape and np.allclose(t[0], 0.0)]
            fs = [f for s in sins if (f := freqs_from_cos_sin(cos, s)) is not None]
            fs = [f for f in (pair_columns(f, head_size) for f in fs) if f is not None]
            if fs:
                found.append((fs[0], cos.shape[0], f"the cos/sin tables {cos.shape}"))
            else:
                raise ModelFileError(f"{g.where}: a constant cos table {cos.shape} without a matching sin table "
                                     "(rows: positions 0, 1, ...); cannot read the RoPE frequencies")
    if not found:
        return None, None
    f0, rows, what = found[0]
    for f, _, other in found[1:]:
        if not np.allclose(f, f0, rtol=1e-5, atol=0):
            raise ModelFileError(f"{g.where}: {what} and {other} give different RoPE frequencies; the twin "
                                 "applies one RoPE to every layer")
    return f0, rows


def load_onnx(path: str | Path, *, n_heads: int | None = None, n_kv_heads: int | None = None,
              seq_len: int | None = None, norm_eps: float | None = None, rope_theta: float | None = None,
              tokenizer: str | Path | None = None) -> FloatModel:
    """Import an ONNX decoder; keyword arguments override what cannot be read off the graph. The
    tokenizer is ``tokenizer`` or tokenizer.json beside the file."""
    import onnx
    from google.protobuf.message import DecodeError

    where = str(path)
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{where}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    except Exception as exc:   # protobuf raises a few other types on garbage
        raise ModelFileError(f"{where}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ModelFileError(f"{where}: an ONNX model without graph nodes (truncated or not a model)")
    g = _Graph(model, where)
    for n in g.nodes:
        if n.op_type in UNSUPPORTED_HINT:
            raise ModelFileError(f"{where}: unsupported op {n.op_type}: {UNSUPPORTED_HINT[n.op_type]}")
        if n.op_type not in SUPPORTED_OPS:
            raise ModelFileError(f"{where}: unsupported op {n.op_type!r} (node {n.name!r}) in a Llama-style decoder")
    meta = {p.key: p.value for p in model.metadata_props}

    # embedding
    embs = []
    for n in g.nodes:
        if n.op_type == "Gather":
            w = g.const(n.input[0])
            if w is not None and w.ndim == 2 and g.const(n.input[1]) is None:
                embs.append(w)
    if len(embs) != 1:
        raise ModelFileError(f"{where}: expected one token-embedding Gather, found {len(embs)}")
    tok_emb = embs[0]
    if tok_emb.dtype.kind != "f":
        raise ModelFileError(f"{where}: token embedding has unsupported dtype {tok_emb.dtype}")
    vocab, dim = tok_emb.shape

    linears = _find_linears(g)
    for lin in linears:
        if lin.weight.dtype.kind != "f":
            raise ModelFileError(f"{where}: linear {lin.node.name!r} has unsupported dtype {lin.weight.dtype}")
    cache: dict = {}
    norms: list[_Norm] = []
    for lin in linears:
        lin.norm = _find_norm(g, lin, dim, cache)
        if lin.norm is not None:
            if not lin.norm.linears:
                norms.append(lin.norm)
            lin.norm.linears.append(lin)
    norms.sort(key=lambda nm: nm.pos)
    if len(norms) < 3 or len(norms) % 2 == 0:
        raise ModelFileError(f"{where}: found {len(norms)} RMSNorms feeding linear layers; a decoder has "
                             "2 per layer plus the final one")
    final = norms[-1]
    n_layers = (len(norms) - 1) // 2
    if len(final.linears) != 1 or final.linears[0].weight.shape != (vocab, dim):
        raise ModelFileError(f"{where}: the last norm does not feed a ({vocab} x {dim}) classifier")
    classifier = final.linears[0].weight
    raw = [lin for lin in linears if lin.norm is None]
    softmaxes = [n for n in g.nodes if n.op_type == "Softmax"]
    sigmoids = [n for n in g.nodes if n.op_type in ("Sigmoid", "Silu", "Swish")]

    layers: list[dict[str, np.ndarray]] = []
    head_size = eps = None
    q_shape: list[int | None] = []
    rope_outputs, first_score_pos = [], None
    for i in range(n_layers):
        an, fn, nxt = norms[2 * i], norms[2 * i + 1], norms[2 * i + 2]
        if len(an.linears) != 3:
            raise ModelFileError(f"{where}: layer {i}: the attention norm feeds {len(an.linears)} linear layers, "
                                 "expected q, k and v (fused QKV projections are not supported)")
        if len(fn.linears) != 2:
            raise ModelFileError(f"{where}: layer {i}: the FFN norm feeds {len(fn.linears)} linear layers, "
                                 "expected gate and up (SwiGLU)")
        sm = [n for n in softmaxes if an.pos < g.index[id(n)] < fn.pos]
        if len(sm) != 1:
            raise ModelFileError(f"{where}: layer {i}: expected one attention Softmax, found {len(sm)}")
        sm_anc = g.ancestors([sm[0].input[0]])
        feeds = [lin for lin in an.linears if id(lin.node) in sm_anc]
        vs = [lin for lin in an.linears if id(lin.node) not in sm_anc]
        if len(feeds) != 2 or len(vs) != 1:
            raise ModelFileError(f"{where}: layer {i}: cannot tell q, k and v apart")
        score = g.producer.get(sm[0].input[0])
        while score is not None and not (score.op_type == "MatMul" and all(g.const(x) is None for x in score.input)):
            dyn = [x for x in score.input if g.const(x) is None and g.producer.get(x) is not None
                   and g.index[id(g.producer[x])] > an.pos]
            score = g.producer.get(dyn[0]) if dyn else None
        if score is None:
            raise ModelFileError(f"{where}: layer {i}: no q·kᵀ MatMul before the Softmax")
        a0 = g.ancestors([score.input[0]])
        q = next((lin for lin in feeds if id(lin.node) in a0), None)
        k = next((lin for lin in feeds if lin is not q), None)
        if q is None or k is None or id(k.node) in a0:
            raise ModelFileError(f"{where}: layer {i}: cannot tell q from k")
        sg = [n for n in sigmoids if fn.pos < g.index[id(n)] < nxt.pos]
        gate = [lin for lin in fn.linears if sg and id(lin.node) in g.ancestors([sg[0].input[0]])]
        if len(sg) != 1 or len(gate) != 1:
            raise ModelFileError(f"{where}: layer {i}: no SwiGLU gate (sigmoid/silu) found in the feed-forward block")
        up = next(lin for lin in fn.linears if lin is not gate[0])
        o = [lin for lin in raw if an.pos < lin.pos < fn.pos]
        down = [lin for lin in raw if fn.pos < lin.pos < nxt.pos]
        if len(o) != 1 or len(down) != 1:
            raise ModelFileError(f"{where}: layer {i}: expected one output and one down projection, "
                                 f"found {len(o)} and {len(down)}")
        layers.append({"attn_norm": an.weight, "wq": q.weight, "wk": k.weight, "wv": vs[0].weight,
                       "wo": o[0].weight, "ffn_norm": fn.weight, "w1": gate[0].weight, "w2": down[0].weight,
                       "w3": up.weight})
        if i == 0:
            eps = an.eps
            rope_outputs, first_score_pos = [q.out, k.out], g.index[id(score)]
            for n in g.descendants(q.out, limit=50):
                if n.op_type == "Reshape":
                    tail = g.shape_tail(n.input[1])
                    if len(tail) >= 2 and tail[-1] and tail[-1] > 1 and dim % tail[-1] == 0 and tail[-1] != 2:
                        q_shape = tail
                        break

    heads = n_heads or int(meta.get("n_heads", 0) or meta.get("num_attention_heads", 0) or 0)
    if not heads and q_shape:
        hs = q_shape[-1]
        heads = dim // hs if hs else 0
    if not heads:
        raise ModelFileError(f"{where}: cannot read the number of attention heads off the graph; pass n_heads")
    head_size = dim // heads
    kv_dim = layers[0]["wk"].shape[0]
    kv_heads = n_kv_heads or kv_dim // head_size
    layout = _rope_layout(g, rope_outputs, first_score_pos, head_size)
    rope_freq, table_len = _rope_freqs(g, head_size)
    if rope_theta is not None:   # the caller's θ wins over what the graph holds
        rope_freq = rope_frequencies(head_size, rope_theta)
    if rope_freq is None:
        raise ModelFileError(f"{where}: cannot read the RoPE frequencies off the graph (no constant angle table or "
                             "cos/sin tables, no inv_freq vector feeding Cos/Sin); pass rope_theta")
    try:
        theta, rope_freq = describe(rope_freq, head_size)
    except ValueError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    c = ModelConfig(dim=dim, hidden_dim=layers[0]["w1"].shape[0], n_layers=n_layers, n_heads=heads,
                    n_kv_heads=kv_heads, vocab_size=vocab, seq_len=seq_len or table_len or 256,
                    norm_eps=norm_eps or eps or 1e-5, name=Path(where).stem[:16],
                    shared_classifier=bool(np.array_equal(classifier, tok_emb)),
                    rope_theta=rope_theta or theta)
    if layout == "half":
        for lw in layers:
            lw["wq"] = unpermute_rope(np.asarray(lw["wq"]), heads)
            lw["wk"] = unpermute_rope(np.asarray(lw["wk"]), kv_heads)

    def get(name: str, layer: int | None) -> np.ndarray:
        if layer is not None:
            return layers[layer][name]
        return {"tok_emb": tok_emb, "final_norm": final.weight, "classifier": classifier}[name]

    tok = find_tokenizer(tokenizer, Path(path).with_name("tokenizer.json"), c.vocab_size)
    return build_model(c, get, where, tok, rope_freq=rope_freq)
