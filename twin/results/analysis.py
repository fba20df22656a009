"""Analysis and recommendations over the results store's frames (docs/results.md "Analysis").

Everything here reads the pandas DataFrames the store's queries return (``ResultsStore.runs()``,
``token_counts()``, ``functions()``, ``classes()``, ``predictions()``; their columns are listed below)
and knows nothing of SQLite. ``frames_from_reports`` builds the same frames from ``twin run --json``
reports (and ``twin predict --json`` objects), so single runs and a store are analysed alike.

- per board: time to first token, time per token, tokens/s, energy per token, memory headroom
  (``board_table``); per run: the per-kernel breakdown (``kernel_breakdown``) and the KV-cache growth of
  the per-token cost, instructions(position) = a + b·position (``kv_growth``);
- scaling laws (``fit_law``, ``scaling_laws``): how decode instructions per token (and a board's
  cycles per token) grow with model size (parameters), context and bit width, fitted by least squares
  in one of two stated forms — ``linear``: y = a + Σ bᵢ·xᵢ, or ``power``: y = c · Π xᵢ^αᵢ (linear least
  squares on log y = log c + Σ αᵢ log xᵢ) — with their residuals; ``extrapolate`` evaluates one for a
  shape not run, with the residual range as its band;
- the Pareto front over (time per token, energy per token, memory headroom) (``pareto_mask``) and
  ``recommend``: the boards × bit widths that meet a set of constraints, ranked, every other one with
  the reason it is not recommended.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RUN_COLUMNS = ("run_id", "cell_key", "status", "error", "platform", "model", "model_sha256", "bits", "recipe",
               "kv_cache", "prompt_tokens", "tokens", "seed", "build_id", "compiler", "cflags", "qemu_version",
               "git_commit", "created_at", "host", "wall_seconds", "instructions_total", "prefill_instructions",
               "decode_instructions_mean", "flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes",
               "model_image_bytes", "ram_bytes", "matches_reference")
TOKEN_COLUMNS = ("run_id", "position", "instructions")
FUNCTION_COLUMNS = ("run_id", "phase", "function", "instructions")
CLASS_COLUMNS = ("run_id", "phase", "cls", "instructions")
PREDICTION_COLUMNS = ("run_id", "board", "calibration", "ttft_s", "ttft_s_low", "ttft_s_high", "token_s",
                      "token_s_low", "token_s_high", "tokens_per_s", "energy_per_token_j", "energy_low",
                      "energy_high", "fits", "flash_needed", "ram_needed", "flash_available", "ram_available",
                      "clock_mhz")

# The recommendation's objectives: (column, "min" | "max").
OBJECTIVES = (("ms_per_token", "min"), ("mj_per_token", "min"), ("headroom", "max"))


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


@dataclass
class Frames:
    """The store's five query results for one set of runs."""
    runs: pd.DataFrame
    token_counts: pd.DataFrame = field(default_factory=lambda: _empty(TOKEN_COLUMNS))
    functions: pd.DataFrame = field(default_factory=lambda: _empty(FUNCTION_COLUMNS))
    classes: pd.DataFrame = field(default_factory=lambda: _empty(CLASS_COLUMNS))
    predictions: pd.DataFrame = field(default_factory=lambda: _empty(PREDICTION_COLUMNS))

    def select(self, query: str | None) -> Frames:
        """The runs a pandas query over ``runs`` selects (e.g. ``"platform == 'mps2-an386' and bits == 4"``),
        with the rows of the other frames that belong to them."""
        if not query:
            return self
        try:
            runs = self.runs.query(query, engine="python")
        except Exception as exc:      # pandas raises many kinds for a bad expression
            raise ValueError(f"--runs {query!r}: not a query over the runs' columns ({exc})") from None
        return self.only(runs["run_id"])

    def only(self, run_ids: Iterable) -> Frames:
        ids = set(run_ids)

        def keep(df: pd.DataFrame) -> pd.DataFrame:
            return df[df["run_id"].isin(ids)].reset_index(drop=True)

        return Frames(keep(self.runs), keep(self.token_counts), keep(self.functions), keep(self.classes),
                      keep(self.predictions))


def frames_from_store(store, query: str | None = None) -> Frames:
    """The five frames from a ``twin.results.store.ResultsStore`` (anything with those five methods)."""
    frames = Frames(store.runs(), store.token_counts(), store.functions(), store.classes(), store.predictions())
    return frames.select(query)


# ---------------------------------------------------------------------------------------------
# Single run reports -> frames
# ---------------------------------------------------------------------------------------------
def cell_key(platform: str, model: str, bits: int, kv_cache: str, prompt_tokens: int, tokens: int) -> str:
    return f"{platform}|{model}|q{bits}|kv-{kv_cache}|p{prompt_tokens}|t{tokens}"


def _prediction_row(run_id, p: Mapping) -> dict:
    def iv(key: str) -> tuple[float, float, float]:
        d = p.get(key) or {}
        value = d.get("value")
        if value is None:
            return (math.nan, math.nan, math.nan)
        low = d.get("low")
        high = d.get("high")
        return (float(value), math.nan if low is None else float(low), math.nan if high is None else float(high))

    ttft, token, energy = iv("ttft_seconds"), iv("token_seconds"), iv("energy_per_token_joules")
    m = p["memory"]
    return {"run_id": run_id, "board": p["platform"], "calibration": p.get("calibration", "prior"),
            "ttft_s": ttft[0], "ttft_s_low": ttft[1], "ttft_s_high": ttft[2],
            "token_s": token[0], "token_s_low": token[1], "token_s_high": token[2],
            "tokens_per_s": float((p.get("tokens_per_second") or {}).get("value") or math.nan),
            "energy_per_token_j": energy[0], "energy_low": energy[1], "energy_high": energy[2],
            "fits": bool(p["fits"]), "flash_needed": int(m["flash_bytes"]), "ram_needed": int(m["ram_bytes"]),
            "flash_available": int(m["flash_available"]), "ram_available": int(m["ram_available"]),
            "clock_mhz": float(p["clock_mhz"])}


def frames_from_reports(reports: Sequence[Mapping], predictions: Sequence[Sequence[Mapping]] | None = None, *,
                        run_ids: Sequence | None = None) -> Frames:
    """Frames from ``twin run --json`` reports (``twin.runner.run``): one run each. ``predictions``, if
    given, is parallel to ``reports``: per report, a list of ``twin predict --json`` objects made from
    its counts (``predict_reports`` makes them). A report may carry store fields the run report lacks
    (``run_id``, ``model_sha256``, ``recipe``, ``seed``, ``created_at``, ``git_commit``, ...); a failed
    cell is ``{"status": "failed", "error": ..., "platform": ..., "model": ..., "bits": ...}``."""
    if predictions is not None and len(predictions) != len(reports):
        raise ValueError(f"predictions: {len(predictions)} lists for {len(reports)} reports")
    runs, toks, funcs, classes, preds = [], [], [], [], []
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for i, r in enumerate(reports):
        run_id = run_ids[i] if run_ids is not None else r.get("run_id", f"run-{i:04d}")
        failed = r.get("status") == "failed" or ("error" in r and "instructions" not in r)
        ins = r.get("instructions") or {}
        phases = ins.get("by_phase") or {}
        decode = list(phases.get("decode") or [])
        mem = r.get("memory") or {}
        fw = r.get("firmware") or {}
        n_prompt = r["prompt_tokens"] if isinstance(r.get("prompt_tokens"), int) else len(r.get("prompt_tokens") or [])
        n_tokens = r["tokens"] if isinstance(r.get("tokens"), int) else len(r.get("tokens") or [])
        bits = int(r.get("bits", 0))
        kv = r.get("kv_cache", "f32")
        row = {
            "run_id": run_id,
            "cell_key": r.get("cell_key") or cell_key(r["platform"], r["model"], bits, kv, n_prompt, n_tokens),
            "status": "failed" if failed else "ok", "error": r.get("error") if failed else None,
            "platform": r["platform"], "model": r["model"], "model_sha256": r.get("model_sha256", ""),
            "bits": bits, "recipe": r.get("recipe", f"q{bits}"), "kv_cache": kv,
            "prompt_tokens": n_prompt, "tokens": n_tokens, "seed": int(r.get("seed", 0)),
            "build_id": r.get("build_id", fw.get("build_id", "")), "compiler": r.get("compiler", ""),
            "cflags": r.get("cflags", ""), "qemu_version": r.get("qemu_version", ""),
            "git_commit": r.get("git_commit", ""), "created_at": r.get("created_at", now),
            "host": r.get("host", ""), "wall_seconds": float(r.get("wall_seconds", math.nan)),
            "instructions_total": ins.get("total"), "prefill_instructions": phases.get("prefill"),
            "decode_instructions_mean": float(np.mean(decode)) if decode else math.nan,
            **{k: mem.get(k) for k in ("flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes",
                                       "model_image_bytes", "ram_bytes")},
            "matches_reference": bool(r.get("matches_reference", False)),
        }
        runs.append(row)
        toks.extend({"run_id": run_id, "position": p, "instructions": int(n)} for p, n in enumerate(decode))
        funcs.extend({"run_id": run_id, "phase": "inference", "function": f["name"],
                      "instructions": int(f["instructions"])} for f in r.get("functions") or [])
        for phase, by_class in (ins.get("by_phase_class") or {}).items():
            classes.extend({"run_id": run_id, "phase": phase, "cls": c, "instructions": int(n)}
                           for c, n in by_class.items())
        for p in (predictions[i] if predictions is not None else ()):
            preds.append(_prediction_row(run_id, p))

    def frame(rows: list[dict], columns: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=list(columns)) if rows else _empty(columns)

    runs_df = frame(runs, RUN_COLUMNS)
    for c in ("instructions_total", "prefill_instructions", "flash_bytes", "ram_static_bytes", "arena_bytes",
              "stack_peak_bytes", "model_image_bytes", "ram_bytes"):
        runs_df[c] = runs_df[c].astype("Int64")
    return Frames(runs_df, frame(toks, TOKEN_COLUMNS), frame(funcs, FUNCTION_COLUMNS), frame(classes, CLASS_COLUMNS),
                  frame(preds, PREDICTION_COLUMNS))


def boards_for(platform: str) -> list[str]:
    """The catalog boards whose counts come from runs on the emulated ``platform`` (itself, its proxies'
    boards, and cross-core stand-ins)."""
    from twin.platforms import all_platforms

    return [p.id for p in all_platforms().values() if p.counts_platform == platform]


def predict_reports(reports: Sequence[Mapping], boards: Sequence[str] | None = None,
                    calibration=None) -> list[list[dict]]:
    """Per report, the ``twin predict --json`` objects of the catalog boards its counts stand for
    (``boards_for``; restricted to ``boards`` if given), from the report's counts — no emulator run."""
    from calibration.predict import counts_from_report, predict_from_counts
    from twin.platforms import get_platform

    out = []
    for r in reports:
        if "instructions" not in r:
            out.append([])
            continue
        counts = counts_from_report(r, r.get("model_sha256", ""))
        ids = [b for b in boards_for(r["platform"]) if boards is None or b in boards]
        out.append([predict_from_counts(get_platform(b), counts, calibration=calibration) for b in ids])
    return out


# ---------------------------------------------------------------------------------------------
# Per board, per run
# ---------------------------------------------------------------------------------------------
def board_table(runs: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, board) prediction, joined with its run, plus the derived metrics: ``ttft_ms``,
    ``ms_per_token``, ``tokens_per_s``, ``mj_per_token`` (NaN: no power figures), ``flash_headroom`` and
    ``ram_headroom`` (1 − needed/available), ``headroom`` (the smaller), ``token_cycles``."""
    keep = [c for c in RUN_COLUMNS if c != "run_id" and c in runs.columns]
    extra = [c for c in ("params",) if c in runs.columns]
    t = predictions.merge(runs[["run_id", *keep, *extra]], on="run_id", how="inner")
    t = t.copy()
    for c in ("ttft_s", "token_s", "energy_per_token_j", "tokens_per_s", "clock_mhz"):
        t[c] = pd.to_numeric(t[c], errors="coerce").astype(float)
    t["ttft_ms"] = t["ttft_s"] * 1e3
    t["ms_per_token"] = t["token_s"] * 1e3
    t["mj_per_token"] = t["energy_per_token_j"] * 1e3
    t["flash_headroom"] = 1 - t["flash_needed"].astype(float) / t["flash_available"].astype(float)
    t["ram_headroom"] = 1 - t["ram_needed"].astype(float) / t["ram_available"].astype(float)
    t["headroom"] = t[["flash_headroom", "ram_headroom"]].min(axis=1)
    t["token_cycles"] = t["token_s"] * t["clock_mhz"] * 1e6
    return t


def kernel_breakdown(functions: pd.DataFrame, top: int = 8) -> pd.DataFrame:
    """Per (run, phase): the ``top`` functions by instructions and the rest as ``(other)``, with each
    one's ``share`` of the phase."""
    if functions.empty:
        return pd.DataFrame(columns=["run_id", "phase", "function", "instructions", "share"])
    f = functions.copy()
    f["instructions"] = f["instructions"].astype("int64")
    f = f.sort_values(["run_id", "phase", "instructions", "function"], ascending=[True, True, False, True])
    f["_rank"] = f.groupby(["run_id", "phase"]).cumcount()
    f.loc[f["_rank"] >= top, "function"] = "(other)"
    g = f.groupby(["run_id", "phase", "function"], sort=False, as_index=False)["instructions"].sum()
    g["share"] = g["instructions"] / g.groupby(["run_id", "phase"])["instructions"].transform("sum")
    return g


def kv_growth(token_counts: pd.DataFrame) -> pd.DataFrame:
    """Per run, the least-squares line instructions(position) = a + b·position over its decoded tokens
    (b: the per-token cost the KV cache adds per position), with ``rms_residual`` (instructions),
    ``max_rel_residual`` and ``n``. Runs of one token have b = 0. (Closed form per run, vectorised.)"""
    cols = ["run_id", "a", "b", "n", "rms_residual", "max_rel_residual"]
    if token_counts.empty:
        return pd.DataFrame(columns=cols)
    x = token_counts["position"].to_numpy(float)
    y = token_counts["instructions"].to_numpy(float)
    d = pd.DataFrame({"run_id": token_counts["run_id"].to_numpy(), "x": x, "y": y, "xx": x * x, "xy": x * y})
    g = d.groupby("run_id", sort=True)
    s = g[["x", "y", "xx", "xy"]].sum()
    n = g.size().to_numpy(float)
    den = n * s["xx"].to_numpy() - s["x"].to_numpy() ** 2
    flat = den <= 0
    b = np.where(flat, 0.0, (n * s["xy"].to_numpy() - s["x"].to_numpy() * s["y"].to_numpy()) / np.where(flat, 1, den))
    a = (s["y"].to_numpy() - b * s["x"].to_numpy()) / n
    coef = pd.DataFrame({"a": a, "b": b}, index=s.index)
    fit = coef.loc[d["run_id"]].to_numpy()
    res = y - (fit[:, 0] + fit[:, 1] * x)
    r = pd.DataFrame({"run_id": d["run_id"], "sq": res ** 2, "rel": np.abs(res) / np.where(y == 0, np.nan, y)})
    rg = r.groupby("run_id", sort=True)
    out = pd.DataFrame({"run_id": s.index, "a": a, "b": b, "n": n.astype(int),
                        "rms_residual": np.sqrt(rg["sq"].mean().to_numpy()),
                        "max_rel_residual": rg["rel"].max().to_numpy()})
    return out.reset_index(drop=True)


def token_table(runs: pd.DataFrame, token_counts: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per decoded token: its run's columns (``columns`` of them, default all), ``position`` and ``context``
    = prompt tokens + position (the number of positions in the KV cache the token attends over, less one)."""
    if columns is not None:
        runs = runs[list(dict.fromkeys(["run_id", "prompt_tokens", *columns]))]
    tc = token_counts[["run_id", "position", "instructions"]]
    t = tc.merge(runs, on="run_id", how="inner")
    t["context"] = t["prompt_tokens"].astype(int) + t["position"].astype(int)
    return t


# ---------------------------------------------------------------------------------------------
# Scaling laws
# ---------------------------------------------------------------------------------------------
FORMS = {"linear": "y = a + Σ bᵢ·xᵢ (least squares)",
         "power": "y = c · Π xᵢ^αᵢ (least squares on log y = log c + Σ αᵢ·log xᵢ)"}


@dataclass(frozen=True)
class ScalingLaw:
    """A fitted law y(x₁, …) in a stated ``form`` over one group of rows (e.g. one platform and bit width)."""
    name: str
    y: str
    variables: tuple[str, ...]
    form: str                        # "linear" or "power" (FORMS)
    coef: dict[str, float]           # linear: "a" and one per variable; power: "c" and one exponent per variable
    group: dict[str, object]
    n: int
    ranges: dict[str, tuple[float, float]]
    residuals: pd.DataFrame          # the fitted rows: variables, y, fitted, rel_residual (y / fitted − 1)
    r2: float

    @property
    def max_rel_residual(self) -> float:
        r = self.residuals["rel_residual"]
        return float(r.abs().max()) if len(r) else math.nan

    @property
    def rms_rel_residual(self) -> float:
        r = self.residuals["rel_residual"].to_numpy(float)
        return float(np.sqrt(np.mean(r ** 2))) if len(r) else math.nan

    def predict(self, **x: float) -> float:
        missing = [v for v in self.variables if v not in x]
        if missing:
            raise ValueError(f"law {self.name}: give {', '.join(missing)}")
        if self.form == "linear":
            return self.coef["a"] + sum(self.coef[v] * float(x[v]) for v in self.variables)
        if any(float(x[v]) <= 0 for v in self.variables):
            raise ValueError(f"law {self.name}: a power law needs positive {', '.join(self.variables)}")
        return self.coef["c"] * math.prod(float(x[v]) ** self.coef[v] for v in self.variables)

    def formula(self) -> str:
        if self.form == "linear":
            return f"{self.y} = {self.coef['a']:.6g}" + "".join(
                f" {'+' if self.coef[v] >= 0 else '−'} {abs(self.coef[v]):.6g}·{v}" for v in self.variables)
        return f"{self.y} = {self.coef['c']:.6g}" + "".join(f" · {v}^{self.coef[v]:.4f}" for v in self.variables)

    def to_json(self) -> dict:
        return {"name": self.name, "y": self.y, "variables": list(self.variables), "form": self.form,
                "form_text": FORMS[self.form], "formula": self.formula(), "coef": self.coef,
                "group": {k: (v.item() if hasattr(v, "item") else v) for k, v in self.group.items()},
                "n": self.n, "ranges": {k: list(v) for k, v in self.ranges.items()}, "r2": self.r2,
                "max_rel_residual": self.max_rel_residual, "rms_rel_residual": self.rms_rel_residual}


def fit_law(data: pd.DataFrame, y: str, variables: Sequence[str], form: str = "linear", *, name: str | None = None,
            group: Mapping[str, object] | None = None) -> ScalingLaw:
    """Least-squares fit of ``y`` over ``variables`` in ``form`` ("linear" or "power", FORMS) on the rows
    of ``data``. Needs at least as many distinct shapes as coefficients, each variable varying."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: one of {', '.join(FORMS)}")
    variables = tuple(variables)
    cols = [pd.to_numeric(data[c], errors="coerce").to_numpy(float) for c in (*variables, y)]
    M = np.column_stack(cols) if len(data) else np.zeros((0, len(cols)))
    M = M[np.isfinite(M).all(axis=1)]
    X, Y = M[:, :-1], M[:, -1]
    k = len(variables) + 1
    distinct = len(np.unique(X, axis=0)) if len(X) else 0
    flat = [v for i, v in enumerate(variables) if len(np.unique(X[:, i])) < 2]
    if distinct < k or flat:
        why = f"{', '.join(flat)} never varies" if flat else f"{distinct} distinct shapes for {k} coefficients"
        raise ValueError(f"law {name or y}: {why}: run more shapes")
    if form == "power":
        if (X <= 0).any() or (Y <= 0).any():
            raise ValueError(f"law {name or y}: a power law needs positive values")
        A_ = np.column_stack([np.ones(len(X)), np.log(X)])
        sol, *_ = np.linalg.lstsq(A_, np.log(Y), rcond=None)
        coef = {"c": float(np.exp(sol[0])), **{v: float(s) for v, s in zip(variables, sol[1:], strict=True)}}
        fitted = np.exp(A_ @ sol)
    else:
        A_ = np.column_stack([np.ones(len(X)), X])
        sol, *_ = np.linalg.lstsq(A_, Y, rcond=None)
        coef = {"a": float(sol[0]), **{v: float(s) for v, s in zip(variables, sol[1:], strict=True)}}
        fitted = A_ @ sol
    ss_res = float(np.sum((Y - fitted) ** 2))
    ss_tot = float(np.sum((Y - Y.mean()) ** 2))
    res = pd.DataFrame({**{v: X[:, i] for i, v in enumerate(variables)}, y: Y, "fitted": fitted,
                        "rel_residual": Y / fitted - 1})
    return ScalingLaw(name=name or f"{y}~{'+'.join(variables)}", y=y, variables=variables, form=form, coef=coef,
                      group=dict(group or {}), n=len(Y),
                      ranges={v: (float(X[:, i].min()), float(X[:, i].max())) for i, v in enumerate(variables)},
                      residuals=res, r2=1 - ss_res / ss_tot if ss_tot > 0 else 1.0)


def estimate_params(model_image_bytes: float, bits: float, group_size: int = 32) -> float:
    """Parameters from an image's size: its quantized weights cost ``bits`` + 32/group_size bits each
    (the fp32 group scale); header and norms are ignored, so a small model is overestimated by a few %."""
    return float(model_image_bytes) * 8 / (float(bits) + 32 / group_size)


def with_params(runs: pd.DataFrame, params: Mapping[str, float] | None = None) -> pd.DataFrame:
    """``runs`` with a ``params`` column: from ``params`` (model name or sha256 → parameter count) where
    it names the model, else an existing ``params`` column, else ``estimate_params``."""
    r = runs.copy()
    est = [estimate_params(b, q) if pd.notna(b) and q else math.nan
           for b, q in zip(r["model_image_bytes"], r["bits"], strict=True)]
    base = r["params"].astype(float).tolist() if "params" in r.columns else [math.nan] * len(r)
    given = params or {}
    out = []
    for m, sha, b, e in zip(r["model"], r["model_sha256"], base, est, strict=True):
        if m in given:
            out.append(float(given[m]))
        elif sha in given:
            out.append(float(given[sha]))
        else:
            out.append(b if pd.notna(b) else e)
    r["params"] = out
    return r


def _laws_by(data: pd.DataFrame, by: Sequence[str], y: str, variables: Sequence[str], form: str,
             name: str) -> list[ScalingLaw]:
    laws = []
    if data.empty:
        return laws
    for key, g in data.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        try:
            laws.append(fit_law(g, y, variables, form, name=name, group=dict(zip(by, key, strict=True))))
        except ValueError:
            continue          # too few shapes in this group: no law
    return laws


def scaling_laws(frames: Frames, params: Mapping[str, float] | None = None) -> list[ScalingLaw]:
    """Every law the frames support (a group with too few distinct shapes has none):

    - ``decode_vs_params`` per (platform, bits, kv_cache): decode instructions per token = a + b·params (linear);
    - ``decode_vs_params_bits`` per (platform, kv_cache): decode instructions per token = c·params^α·bits^β (power);
    - ``token_vs_context`` per (platform, model, bits, kv_cache): instructions of a decoded token = a + b·context (linear);
    - ``cycles_vs_params`` per (board, bits, kv_cache): predicted cycles per token = a + b·params (linear).
    """
    ok = frames.runs[frames.runs["status"] == "ok"]
    runs = with_params(ok, params)
    cell = runs.drop_duplicates(["platform", "model", "bits", "kv_cache", "prompt_tokens", "tokens"])
    laws = _laws_by(cell, ("platform", "bits", "kv_cache"), "decode_instructions_mean", ("params",), "linear",
                    "decode_vs_params")
    laws += _laws_by(cell, ("platform", "kv_cache"), "decode_instructions_mean", ("params", "bits"), "power",
                     "decode_vs_params_bits")
    tt = token_table(runs, frames.token_counts, ["platform", "model", "bits", "kv_cache"])
    tt = tt.drop_duplicates(["platform", "model", "bits", "kv_cache", "context"])
    laws += _laws_by(tt, ("platform", "model", "bits", "kv_cache"), "instructions", ("context",), "linear",
                     "token_vs_context")
    if not frames.predictions.empty:
        bt = board_table(runs, frames.predictions).drop_duplicates(["board", "model", "bits", "kv_cache"])
        laws += _laws_by(bt, ("board", "bits", "kv_cache"), "token_cycles", ("params",), "linear", "cycles_vs_params")
    return laws


@dataclass(frozen=True)
class Extrapolation:
    law: str
    value: float
    low: float                       # value × (1 + the smallest relative residual of the fit)
    high: float                      # value × (1 + the largest)
    inside: bool                     # every variable within the range the law was fitted on
    formula: str
    note: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def extrapolate(law: ScalingLaw | Sequence[ScalingLaw], **x) -> Extrapolation:
    """The law's value at ``x`` (its variables, e.g. ``params=2e6, bits=4``; other keywords must match the
    law's group, e.g. ``platform="mps2-an386"``). Given several laws, the first whose variables are all
    given and whose group matches is used. The band is the fit's residual range; outside the fitted
    range (``inside`` False) it is an extrapolation and the note says so."""
    laws = [law] if isinstance(law, ScalingLaw) else list(law)
    chosen = None
    for cand in laws:
        if not all(v in x for v in cand.variables):
            continue
        extra = {k: v for k, v in x.items() if k not in cand.variables}
        if all(k in cand.group and str(cand.group[k]) == str(v) for k, v in extra.items()):
            chosen = cand
            break
    if chosen is None:
        raise ValueError(f"no law takes {', '.join(f'{k}={v}' for k, v in x.items())}: laws are "
                         + "; ".join(f"{c.name} of ({', '.join(c.variables)}) for {c.group}" for c in laws))
    value = chosen.predict(**{v: x[v] for v in chosen.variables})
    r = chosen.residuals["rel_residual"]
    lo, hi = (float(r.min()), float(r.max())) if len(r) else (0.0, 0.0)
    inside = all(chosen.ranges[v][0] <= float(x[v]) <= chosen.ranges[v][1] for v in chosen.variables)
    note = (f"{chosen.form} law from {chosen.n} rows, residuals {lo:+.2%}..{hi:+.2%}"
            + ("" if inside else "; outside the fitted range: an extrapolation"))
    return Extrapolation(chosen.name, value, value * (1 + min(lo, 0.0)), value * (1 + max(hi, 0.0)), inside,
                         chosen.formula(), note)


# ---------------------------------------------------------------------------------------------
# Pareto front and recommendations
# ---------------------------------------------------------------------------------------------
def _objective_matrix(df: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> np.ndarray:
    cols = []
    for col, sense in objectives:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        v = -v if sense == "max" else v
        cols.append(np.where(np.isnan(v), np.inf, v))    # unknown = worst
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


def pareto_mask(df: pd.DataFrame, objectives: Sequence[tuple[str, str]] = OBJECTIVES) -> np.ndarray:
    """True for the rows no other row dominates (at least as good in every objective, better in one).
    NaN counts as the worst value. O(n·front) after a lexicographic sort: a row can only be dominated
    by one sorted before it, and then by one on the front."""
    M = _objective_matrix(df, objectives)
    n = len(M)
    mask = np.zeros(n, bool)
    if n == 0:
        return mask
    order = np.lexsort(M.T[::-1])
    front = np.empty((0, M.shape[1]))
    for i in order:
        p = M[i]
        if len(front) and np.any(np.all(front <= p, axis=1) & np.any(front < p, axis=1)):
            continue
        mask[i] = True
        front = np.vstack([front, p])
    return mask


def _dominator(M: np.ndarray, i: int, candidates: np.ndarray) -> int | None:
    p = M[i]
    for j in candidates:
        if np.all(M[j] <= p) and np.any(M[j] < p):
            return int(j)
    return None


@dataclass
class Recommendation:
    """``recommended``: the Pareto-optimal rows that meet every constraint, ranked (``rank`` 1 first: by
    time per token, then energy, then headroom); ``rejected``: every other (board, bits) with its
    ``reason`` — a constraint it misses, or the recommended row that dominates it."""
    recommended: pd.DataFrame
    rejected: pd.DataFrame
    constraints: dict

    COLUMNS = ("board", "bits", "kv_cache", "model", "run_id", "platform", "ms_per_token", "ttft_ms",
               "tokens_per_s", "mj_per_token", "headroom", "flash_needed", "flash_available", "ram_needed",
               "ram_available", "calibration")

    def to_json(self) -> dict:
        def rows(df: pd.DataFrame, extra: Sequence[str]) -> list[dict]:
            cols = [c for c in (*self.COLUMNS, *extra) if c in df.columns]
            out = []
            for rec in df[cols].to_dict("records"):
                out.append({k: _jsonable(v) for k, v in rec.items()})
            return out

        return {"constraints": self.constraints, "objectives": [list(o) for o in OBJECTIVES],
                "recommended": rows(self.recommended, ("rank",)), "rejected": rows(self.rejected, ("reason",))}


def _jsonable(v):
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _bytes(n: float) -> str:
    n = float(n)
    return f"{n / 1024:.1f} KiB" if abs(n) < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


_QUANT_SUFFIX = re.compile(r"-q\d+g\d+$")


def model_family(name: str) -> str:
    """A model's name without the quantization suffix the runner adds (``builtin-q4g32`` → ``builtin``)."""
    return _QUANT_SUFFIX.sub("", str(name))


def _matches_model(runs: pd.DataFrame, model: str) -> pd.Series:
    names = runs["model"].astype(str)
    sha = runs["model_sha256"].fillna("").astype(str)
    by_sha = sha.str.startswith(model) if len(model) >= 8 else sha == model
    return (names == model) | (names.map(model_family) == model) | (by_sha & (sha != ""))


def recommend(runs: pd.DataFrame, predictions: pd.DataFrame, *, model: str, max_ms_per_token: float | None = None,
              max_mj_per_token: float | None = None, min_headroom: float | None = None,
              boards: Sequence[str] | None = None) -> Recommendation:
    """The boards × bit widths for ``model`` (its name or sha256) that meet the constraints.

    Per (board, bits, kv_cache) the latest successful run's prediction counts (``created_at``, then
    ``run_id``). A candidate fails when its run failed or its tokens differ from the host reference, it
    does not fit, or it misses a constraint (an unknown energy misses ``max_mj_per_token``); of the rest,
    the Pareto front over (ms/token ↓, mJ/token ↓, headroom ↑) is recommended and each dominated one is
    rejected naming a recommended row that dominates it. A board named in ``boards`` without a
    prediction is rejected with that reason."""
    constraints = {"model": model, "max_ms_per_token": max_ms_per_token, "max_mj_per_token": max_mj_per_token,
                   "min_headroom": min_headroom, "boards": list(boards) if boards else None}
    mr = runs[_matches_model(runs, model)]
    if mr.empty:
        known = sorted(set(runs["model"].astype(str)))
        raise ValueError(f"no run of model {model!r}: the runs have {', '.join(known) or 'no model'}")
    rejected: list[dict] = []
    for _, r in mr[mr["status"] != "ok"].iterrows():
        rejected.append({"board": None, "bits": int(r["bits"]), "kv_cache": r["kv_cache"], "model": r["model"],
                         "run_id": r["run_id"], "platform": r["platform"],
                         "reason": f"run failed on {r['platform']}: {r['error']}"})
    t = board_table(mr[mr["status"] == "ok"], predictions)
    if boards:
        t = t[t["board"].isin(list(boards))]
    t = t.sort_values(["created_at", "run_id"]).drop_duplicates(["board", "bits", "kv_cache"], keep="last")
    t = t.sort_values(["board", "bits", "kv_cache"]).reset_index(drop=True)
    for b in boards or ():
        if b not in set(t["board"]):
            rejected.append({"board": b, "bits": None, "kv_cache": None, "model": model, "run_id": None,
                             "platform": None, "reason": f"no prediction for {b}: no successful run of this "
                                                         "model on its counts platform in the store"})
    reasons: list[list[str]] = [[] for _ in range(len(t))]
    for i, r in t.iterrows():
        why = reasons[i]
        if not _true(r["matches_reference"]):
            why.append("tokens differ from the host reference")
        if not _true(r["fits"]):
            short = [f"{what} short by {_bytes(need - have)}" for what, need, have in
                     (("flash", r["flash_needed"], r["flash_available"]), ("RAM", r["ram_needed"], r["ram_available"]))
                     if need > have]
            why.append("does not fit (" + ", ".join(short or ["memory"]) + ")")
        if max_ms_per_token is not None and not (r["ms_per_token"] <= max_ms_per_token):
            why.append(f"{r['ms_per_token']:.4g} ms/token > {max_ms_per_token:g}")
        if max_mj_per_token is not None:
            if math.isnan(r["mj_per_token"]):
                why.append("energy not predicted (no power figures for the board)")
            elif not (r["mj_per_token"] <= max_mj_per_token):
                why.append(f"{r['mj_per_token']:.4g} mJ/token > {max_mj_per_token:g}")
        if min_headroom is not None and not (r["headroom"] >= min_headroom):
            why.append(f"headroom {r['headroom']:.1%} < {min_headroom:.1%}")
    passing = np.array([not w for w in reasons], bool)
    M = _objective_matrix(t, OBJECTIVES)
    front = np.zeros(len(t), bool)
    idx = np.flatnonzero(passing)
    front[idx] = pareto_mask(t.iloc[idx])
    front_idx = np.flatnonzero(front)
    for i in idx[~front[idx]]:
        j = _dominator(M, i, front_idx)
        d = t.iloc[j]
        reasons[i].append(f"dominated by {d['board']} {int(d['bits'])}-bit ({d['ms_per_token']:.4g} ms/token, "
                          f"{_fmt_mj(d['mj_per_token'])}, headroom {d['headroom']:.1%})")
    rec = t[front].copy()
    rec = rec.assign(_e=rec["mj_per_token"].fillna(np.inf)).sort_values(
        ["ms_per_token", "_e", "headroom", "board", "bits"], ascending=[True, True, False, True, True]).drop(columns="_e")
    rec.insert(0, "rank", np.arange(1, len(rec) + 1))
    rej = t[~front].copy()
    rej["reason"] = ["; ".join(reasons[i]) for i in np.flatnonzero(~front)]
    rej = pd.concat([rej, pd.DataFrame(rejected)], ignore_index=True) if rejected else rej
    return Recommendation(rec.reset_index(drop=True), rej.reset_index(drop=True), constraints)


def _true(v) -> bool:
    """A stored flag: NULL (pd.NA, None, NaN) is not true."""
    return False if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else bool(v)


def _fmt_mj(v: float) -> str:
    return "energy n/a" if math.isnan(v) else f"{v:.4g} mJ/token"


# ---------------------------------------------------------------------------------------------
# Synthetic frames (benchmarks, demos of the report): the store's columns, plausible numbers
# ---------------------------------------------------------------------------------------------
def synthetic_frames(n_runs: int, seed: int = 0, tokens: int = 16) -> Frames:
    """``n_runs`` runs over 4 platforms × 3 model sizes × 4 bit widths × prompt lengths, each with
    ``tokens`` decoded tokens, 12 functions, 9 classes per phase and 3 board predictions."""
    rng = np.random.default_rng(seed)
    platforms = {"mps2-an386": ["mps2-an386", "nucleo-l4r5zi", "nrf52840-dk"],
                 "mps2-an500": ["mps2-an500", "nucleo-h743zi", "nucleo-f746zg"],
                 "mps2-an505": ["mps2-an505", "b-u585i-iot02a", "rpi-pico2"],
                 "riscv32-virt": ["riscv32-virt", "esp32-c3-devkit", "hifive1-revb"]}
    sizes = {"tiny-60k": 60e3, "small-260k": 260e3, "mid-1m": 1.0e6}
    funcs = ["matvec_q", "quantize_act", "attention_head", "tw_expf", "rmsnorm", "rope", "softmax", "silu",
             "memcpy", "argmax", "embed", "main"]
    classes = ["alu", "load", "store", "mul", "div", "branch", "fp", "simd", "other"]
    runs, toks, fns, cls, preds = [], [], [], [], []
    plats = list(platforms)
    for i in range(n_runs):
        plat = plats[i % 4]
        model = list(sizes)[(i // 4) % 3]
        bits = (2, 3, 4, 8)[(i // 12) % 4]
        prompt = (8, 16, 32)[(i // 48) % 3]
        params = sizes[model]
        per_tok = 3.5 * params * (0.8 + 0.05 * bits) + 50_000
        kv_b = 20 * math.sqrt(params)
        decode = [int(per_tok + kv_b * (prompt + p) + rng.integers(0, 50)) for p in range(tokens)]
        prefill = int(prompt * per_tok * 0.9)
        image = int(params * (bits + 1) / 8)
        rid = i + 1
        runs.append({"run_id": rid, "cell_key": f"{plat}|{model}|q{bits}|kv-f32|p{prompt}|t{tokens}|{i // 576}",
                     "status": "ok", "error": None, "platform": plat, "model": model, "model_sha256": f"{i % 3:064x}",
                     "bits": bits, "recipe": f"q{bits}g32", "kv_cache": "f32", "prompt_tokens": prompt,
                     "tokens": tokens, "seed": 0, "build_id": "b0", "compiler": "gcc 12", "cflags": "-O2",
                     "qemu_version": "7.2", "git_commit": "c0ffee", "created_at": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}",
                     "host": "bench", "wall_seconds": 0.2, "instructions_total": prefill + sum(decode),
                     "prefill_instructions": prefill, "decode_instructions_mean": float(np.mean(decode)),
                     "flash_bytes": 20_000, "ram_static_bytes": 1_600, "arena_bytes": int(params * 0.4),
                     "stack_peak_bytes": 600, "model_image_bytes": image, "ram_bytes": 4 << 20,
                     "matches_reference": True})
        toks.extend({"run_id": rid, "position": p, "instructions": n} for p, n in enumerate(decode))
        total = prefill + sum(decode)
        w = np.array([0.7, 0.1, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01, 0.01, 0.01, 0.005, 0.005])
        fns.extend({"run_id": rid, "phase": "inference", "function": f if f != "matvec_q" else f"matvec_q{bits}",
                    "instructions": int(total * s)} for f, s in zip(funcs, w, strict=True))
        mix = rng.dirichlet(np.ones(9))
        for phase, n in (("prefill", prefill), ("decode", sum(decode))):
            cls.extend({"run_id": rid, "phase": phase, "cls": c, "instructions": int(n * s)}
                       for c, s in zip(classes, mix, strict=True))
        for j, board in enumerate(platforms[plat]):
            mhz = (25.0, 120.0, 64.0)[j]
            token_s = float(np.mean(decode)) * (1.2 + 0.1 * j) / (mhz * 1e6)
            ram_avail = (4 << 20, 640 << 10, 256 << 10)[j]
            ram_need = 1_600 + int(params * 0.4) + 600
            preds.append({"run_id": rid, "board": board, "calibration": "prior", "ttft_s": token_s * (prompt + 1),
                          "ttft_s_low": token_s * prompt, "ttft_s_high": token_s * (prompt + 2), "token_s": token_s,
                          "token_s_low": token_s * 0.75, "token_s_high": token_s * 1.25, "tokens_per_s": 1 / token_s,
                          "energy_per_token_j": math.nan if j == 0 else token_s * 0.03 * (1 + j),
                          "energy_low": math.nan, "energy_high": math.nan,
                          "fits": ram_need <= ram_avail and image + 20_000 <= (4 << 20, 2 << 20, 1 << 20)[j],
                          "flash_needed": image + 20_000, "ram_needed": ram_need,
                          "flash_available": (4 << 20, 2 << 20, 1 << 20)[j], "ram_available": ram_avail,
                          "clock_mhz": mhz})

    def df(rows, cols):
        return pd.DataFrame(rows, columns=list(cols))

    return Frames(df(runs, RUN_COLUMNS), df(toks, TOKEN_COLUMNS), df(fns, FUNCTION_COLUMNS), df(cls, CLASS_COLUMNS),
                  df(preds, PREDICTION_COLUMNS))
