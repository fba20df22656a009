"""Reports: one self-contained HTML page per result set, and one per comparison of two (docs/results.md
"Reports").

``write_report(frames, out_dir)`` writes ``out_dir/index.html``: tables of the runs, the board
predictions, KV growth and scaling laws, and six matplotlib charts embedded as base64 PNG (tokens/s per
board, energy per token, memory fit, per-kernel breakdown, latency against context, the Pareto front).
``write_comparison(frames_a, frames_b, out_dir)`` writes ``out_dir/compare.html``: per cell (its
latest run in each set), what changed — instruction counts exactly, memory, predicted latency and
energy per board — changed rows highlighted. Neither page loads anything: no external CSS, JS, font
or image. Every number cell carries its exact value (``data-value``) beside the formatted text.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from twin.atomic import write_text

from . import analysis as A

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d1d1f}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td.t{text-align:left}
tr.changed td{background:#fff8e1}td.worse{color:#b00020;font-weight:600}td.better{color:#1b7f3b;font-weight:600}
tr.failed td{color:#888}.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-size:12px;color:#555;max-width:640px}.note{color:#555;font-size:12px}
details{margin:8px 0}
"""


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------
def _num_text(v, kind: str) -> str:
    if kind == "int":
        return f"{int(v):,}"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "dpct":
        return f"{v:+.3%}"
    if kind == "dint":
        return f"{int(v):+,}"
    return f"{v:.4g}"


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _cell(v, kind: str = "float", cls: str = "") -> str:
    """A table cell; a float's exact value is in ``data-value`` (ints and text are exact as shown)."""
    c = f' class="{cls}"' if cls else ""
    if _is_missing(v):
        return f"<td{c}>–</td>"
    if kind in ("text", "bool"):
        text = ("yes" if v else "no") if kind == "bool" else str(v)
        return f'<td class="t {cls}">{html.escape(text)}</td>'
    if kind in ("int", "dint"):
        return f"<td{c}>{_num_text(int(v), kind)}</td>"
    value = float(v)
    return f'<td{c} data-value="{value!r}">{_num_text(value, kind)}</td>'


def _table(df: pd.DataFrame, columns: Sequence[tuple[str, str, str]], table_id: str, key: str | None = None,
           row_class=None, cell_class=None, extra: Sequence[str] = ()) -> str:
    """``columns``: (column, header, kind) with kind int | float | pct | dpct | dint | text | bool."""
    head = "".join(f'<th data-col="{html.escape(c)}">{html.escape(h)}</th>' for c, h, _ in columns)
    rows = []
    cols = [c for c, _, _ in columns]
    present = [c for c in dict.fromkeys([*cols, *([key] if key else []), *extra]) if c in df.columns]
    records = df[present].to_dict("records") if len(df) else []
    for rec in records:
        cells = "".join(_cell(rec.get(c), kind, cell_class(rec, c) if cell_class else "")
                        for c, _, kind in columns)
        rc = row_class(rec) if row_class else ""
        k = f' data-key="{html.escape(str(rec[key]))}"' if key else ""
        rows.append(f'<tr{k}{f" class={chr(34)}{rc}{chr(34)}" if rc else ""}>{cells}</tr>')
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>' + "".join(rows)
            + "</tbody></table>")


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(chart_id: str, title: str, b64: str | None, caption: str) -> str:
    if b64 is None:
        return (f'<figure id="{chart_id}"><figcaption><b>{html.escape(title)}</b>: {html.escape(caption)}'
                "</figcaption></figure>")
    return (f'<figure id="{chart_id}"><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
            f"<figcaption><b>{html.escape(title)}</b>: {html.escape(caption)}</figcaption></figure>")


def _rects(ax, pos, lengths, thickness, start=None, *, horizontal=False, color=None, label=None):
    """Bars as one PolyCollection (matplotlib's bar() makes one patch per bar, ~10× slower to draw)."""
    from matplotlib.collections import PolyCollection

    pos = np.asarray(pos, float)
    lengths = np.nan_to_num(np.asarray(lengths, float))
    start = np.zeros_like(pos) if start is None else np.asarray(start, float)
    lo, hi = pos - thickness / 2, pos + thickness / 2
    if horizontal:
        verts = np.stack([np.column_stack([start, lo]), np.column_stack([start + lengths, lo]),
                          np.column_stack([start + lengths, hi]), np.column_stack([start, hi])], axis=1)
    else:
        verts = np.stack([np.column_stack([lo, start]), np.column_stack([hi, start]),
                          np.column_stack([hi, start + lengths]), np.column_stack([lo, start + lengths])], axis=1)
    pc = PolyCollection(verts, facecolors=color, edgecolors="none", label=label)
    ax.add_collection(pc)
    return pc


def _color(i: int) -> str:
    return _plt().rcParams["axes.prop_cycle"].by_key()["color"][i % 10]


def _keys_label(df: pd.DataFrame, with_platform: bool) -> pd.Series:
    """Per row, "platform · model qN": formatted once per distinct key, not per row."""
    keys = ["platform", "model", "bits", "kv_cache"] if with_platform else ["model", "bits", "kv_cache"]
    u = df[keys].drop_duplicates()
    labels = [(f"{r[0]} · " if with_platform else "") + _series_label(*r[-3:]) for r in u.itertuples(index=False)]
    u = u.assign(_label=labels)
    return df[keys].merge(u, on=keys, how="left")["_label"].set_axis(df.index)


def _series_label(model, bits, kv) -> str:
    return f"{A.model_family(model)} q{int(bits)}" + ("" if kv in (None, "f32") else f" kv-{kv}")


def _grouped_bars(bt: pd.DataFrame, value: str, ylabel: str, title: str, max_series: int = 8):
    plt = _plt()
    d = bt.dropna(subset=[value])
    if d.empty:
        return None
    d = d.assign(series=_keys_label(d, False))
    top = d["series"].value_counts().index[:max_series]
    d = d[d["series"].isin(top)]
    pivot = d.groupby(["board", "series"])[value].median().unstack("series")
    boards = list(pivot.index)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    n = max(len(pivot.columns), 1)
    width = 0.8 / n
    x = np.arange(len(boards))
    for i, s in enumerate(pivot.columns):
        _rects(ax, x + (i - (n - 1) / 2) * width, pivot[s].to_numpy(float), width, color=_color(i), label=s)
    ax.set_xlim(-0.6, len(boards) - 0.4)
    ax.set_ylim(0, float(np.nanmax(pivot.to_numpy(float))) * 1.1)
    ax.set_xticks(x, boards, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.subplots_adjust(left=0.08, right=0.8, top=0.9, bottom=0.3)
    return _png(fig)


def chart_tokens_per_s(bt: pd.DataFrame):
    return _grouped_bars(bt, "tokens_per_s", "tokens/s", "Tokens per second per board (median over runs)")


def chart_energy(bt: pd.DataFrame):
    return _grouped_bars(bt, "mj_per_token", "mJ/token", "Energy per token per board (median over runs)")


def chart_memory(bt: pd.DataFrame):
    if bt.empty:
        return None
    plt = _plt()
    g = bt.assign(flash_use=bt["flash_needed"].astype(float) / bt["flash_available"].astype(float),
                  ram_use=bt["ram_needed"].astype(float) / bt["ram_available"].astype(float))
    g = g.groupby("board")[["flash_use", "ram_use"]].max().sort_index()
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.28 * len(g)))
    y = np.arange(len(g))
    for off, col, label in ((-0.2, "flash_use", "flash (code + model)"), (0.2, "ram_use", "RAM (static + arena + stack)")):
        vals = g[col].to_numpy(float) * 100
        base = _color(0 if col == "flash_use" else 1)
        _rects(ax, y + off, vals, 0.4, horizontal=True, color=[("#b00020" if v > 100 else base) for v in vals],
               label=label)
    ax.set_xlim(0, max(110.0, float(np.nanmax(g.to_numpy(float))) * 105))
    ax.set_ylim(-0.6, len(g) - 0.4)
    ax.axvline(100, color="k", lw=1, ls="--")
    ax.set_yticks(y, list(g.index), fontsize=8)
    ax.set_xlabel("% of the board's memory used (worst run; red: does not fit)")
    ax.set_title("Memory fit", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.2, right=0.98, top=1 - 0.35 / h, bottom=0.55 / h)
    return _png(fig)


def chart_kernels(runs: pd.DataFrame, functions: pd.DataFrame, top: int = 7, max_rows: int = 16):
    if functions.empty:
        return None
    plt = _plt()
    ok = runs[runs["status"] == "ok"]
    f = functions.merge(ok[["run_id", "platform", "model", "bits", "kv_cache"]], on="run_id")
    if f.empty:
        return None
    f = f.assign(cell=_keys_label(f, True))
    latest = f.drop_duplicates("cell", keep="last")[["cell", "run_id"]]
    f = f[f["run_id"].isin(latest["run_id"].iloc[:max_rows])]
    total = f.groupby("function")["instructions"].sum().sort_values(ascending=False)
    keep = list(total.index[:top])
    f = f.assign(function=np.where(f["function"].isin(keep), f["function"], "(other)"))
    share = f.groupby(["cell", "function"])["instructions"].sum().unstack("function").fillna(0)
    share = share.div(share.sum(axis=1), axis=0)
    order = [k for k in keep if k in share.columns] + (["(other)"] if "(other)" in share.columns else [])
    share = share[order]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.3 * len(share)))
    left = np.zeros(len(share))
    for i, fn in enumerate(share.columns):
        vals = share[fn].to_numpy(float) * 100
        _rects(ax, np.arange(len(share)), vals, 0.8, left.copy(), horizontal=True, color=_color(i), label=fn)
        left += vals
    ax.set_ylim(-0.6, len(share) - 0.4)
    ax.set_yticks(np.arange(len(share)), list(share.index), fontsize=7)
    ax.set_xlabel("% of inference instructions")
    ax.set_xlim(0, 100)
    ax.set_title("Per-kernel breakdown (latest run per cell)", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.5 / fig.get_figheight() - 0.02))
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.33, right=0.98, top=1 - 0.35 / h, bottom=1.0 / h)
    return _png(fig)


def chart_context(runs: pd.DataFrame, token_counts: pd.DataFrame, max_lines: int = 12):
    if token_counts.empty:
        return None
    plt = _plt()
    from matplotlib.collections import LineCollection

    ok = runs[runs["status"] == "ok"]
    t = A.token_table(ok, token_counts, ["platform", "model", "bits", "kv_cache"])
    if t.empty:
        return None
    t = t.assign(series=_keys_label(t, True))
    top = t["series"].value_counts().index[:max_lines]
    t = t[t["series"].isin(top)]
    g = t.groupby(["series", "context"])["instructions"].mean().reset_index()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    segs, labels = [], []
    for s, d in g.groupby("series", sort=True):
        segs.append(np.column_stack([d["context"].to_numpy(float), d["instructions"].to_numpy(float) / 1e6]))
        labels.append(s)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lc = LineCollection(segs, colors=[colors[i % len(colors)] for i in range(len(segs))], linewidths=1.5)
    ax.add_collection(lc)
    ax.autoscale()
    for i, s in enumerate(labels):
        ax.plot([], [], color=colors[i % len(colors)], label=s)
    ax.set_xlabel("context (tokens in the KV cache)")
    ax.set_ylabel("M instructions per decoded token")
    ax.set_title("Latency against context (KV-cache growth)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.subplots_adjust(left=0.08, right=0.7, top=0.9, bottom=0.14)
    return _png(fig)


def chart_pareto(bt: pd.DataFrame):
    d = bt.dropna(subset=["ms_per_token"])
    if d.empty:
        return None
    plt = _plt()
    d = d.sort_values(["created_at", "run_id"]).drop_duplicates(["board", "model", "bits", "kv_cache"], keep="last")
    front = A.pareto_mask(d)
    has_e = d["mj_per_token"].notna().to_numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    sizes = 20 + 200 * np.clip(d["headroom"].to_numpy(float), 0, 1)
    x = d["ms_per_token"].to_numpy(float)
    y = d["mj_per_token"].to_numpy(float)
    sc = ax.scatter(x[has_e], y[has_e], s=sizes[has_e], c=d["headroom"].to_numpy(float)[has_e], cmap="viridis",
                    alpha=0.6, edgecolors="none")
    m = front & has_e
    ax.scatter(x[m], y[m], s=sizes[m], facecolors="none", edgecolors="#b00020", linewidths=1.5,
               label="Pareto front (ms/token, mJ/token, headroom)")
    labels = [f"{b} q{int(q)}" for b, q in zip(d["board"], d["bits"], strict=True)]
    for i in np.flatnonzero(m)[:20]:
        ax.annotate(labels[i], (x[i], y[i]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if has_e.any():
        ax.set_xscale("log")
        ax.set_yscale("log")
        fig.colorbar(sc, ax=ax, label="memory headroom")
    ax.set_xlabel("ms per token")
    ax.set_ylabel("mJ per token")
    n_front_no_e = int((front & ~has_e).sum())
    ax.set_title("Pareto front" + (f" (+{n_front_no_e} on it without an energy figure)" if n_front_no_e else ""),
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.12)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
RUN_TABLE = (("run_id", "run", "text"), ("platform", "platform", "text"), ("model", "model", "text"),
             ("bits", "bits", "int"), ("kv_cache", "KV", "text"), ("prompt_tokens", "prompt", "int"),
             ("tokens", "tokens", "int"), ("status", "status", "text"),
             ("instructions_total", "instructions", "int"), ("prefill_instructions", "prefill", "int"),
             ("decode_instructions_mean", "decode/token", "float"), ("flash_bytes", "flash B", "int"),
             ("ram_static_bytes", "static RAM B", "int"), ("arena_bytes", "arena B", "int"),
             ("stack_peak_bytes", "stack B", "int"), ("model_image_bytes", "model B", "int"),
             ("matches_reference", "bit-exact", "bool"), ("git_commit", "commit", "text"), ("error", "error", "text"))
BOARD_TABLE = (("run_id", "run", "text"), ("board", "board", "text"), ("model", "model", "text"),
               ("bits", "bits", "int"), ("kv_cache", "KV", "text"), ("calibration", "calibration", "text"),
               ("clock_mhz", "MHz", "float"), ("ttft_ms", "TTFT ms", "float"), ("ms_per_token", "ms/token", "float"),
               ("tokens_per_s", "tokens/s", "float"), ("mj_per_token", "mJ/token", "float"),
               ("flash_needed", "flash need B", "int"), ("flash_available", "flash B", "int"),
               ("ram_needed", "RAM need B", "int"), ("ram_available", "RAM B", "int"),
               ("headroom", "headroom", "pct"), ("fits", "fits", "bool"))
KV_TABLE = (("run_id", "run", "text"), ("cell_key", "cell", "text"), ("a", "a (instr.)", "float"),
            ("b", "b (instr./position)", "float"), ("n", "tokens", "int"), ("max_rel_residual", "max |residual|", "float"))
LAW_TABLE = (("name", "law", "text"), ("group", "group", "text"), ("formula", "fit", "text"),
             ("n", "rows", "int"), ("r2", "R²", "float"), ("max_rel_residual", "max |rel. residual|", "float"))


def _summary(frames: A.Frames, bt: pd.DataFrame) -> str:
    r = frames.runs
    ok = int((r["status"] == "ok").sum())
    items = [("runs", f"{len(r)} ({ok} ok, {len(r) - ok} failed)"),
             ("platforms", ", ".join(sorted(set(r["platform"].astype(str))))),
             ("models", ", ".join(sorted(set(r["model"].dropna().astype(str))))),
             ("bit widths", ", ".join(str(int(b)) for b in sorted(set(r["bits"].dropna())))),
             ("boards predicted", ", ".join(sorted(set(bt["board"].astype(str)))) or "none"),
             ("commits", ", ".join(sorted({str(c) for c in r["git_commit"].dropna() if c})) or "–")]
    return "<ul>" + "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in items) + "</ul>"


def render_report(frames: A.Frames, title: str = "tinyllm-twin report") -> str:
    """The report page as a string (``write_report`` writes it)."""
    runs = frames.runs
    ok = runs[runs["status"] == "ok"]
    bt = A.board_table(ok, frames.predictions)
    kv = A.kv_growth(frames.token_counts).merge(runs[["run_id", "cell_key"]], on="run_id", how="left")
    laws = A.scaling_laws(frames)
    law_df = pd.DataFrame([{"name": x.name, "group": ", ".join(f"{k}={v}" for k, v in x.group.items()),
                            "formula": x.formula(), "n": x.n, "r2": x.r2, "max_rel_residual": x.max_rel_residual}
                           for x in laws], columns=[c for c, _, _ in LAW_TABLE])
    charts = [
        ("chart-tokens-per-s", "Tokens per second", chart_tokens_per_s(bt),
         "predicted tokens/s per catalog board, per model and bit width"),
        ("chart-energy", "Energy per token", chart_energy(bt),
         "predicted mJ per decoded token (boards without power figures are absent)"),
        ("chart-memory", "Memory fit", chart_memory(bt), "flash and RAM needed as a share of each board's"),
        ("chart-kernels", "Per-kernel breakdown", chart_kernels(runs, frames.functions),
         "share of inference instructions per function"),
        ("chart-context", "Latency against context", chart_context(runs, frames.token_counts),
         "instructions per decoded token against the tokens in the KV cache"),
        ("chart-pareto", "Pareto front", chart_pareto(bt),
         "ms/token against mJ/token of every (board, model, bit width), marker size and colour: memory "
         "headroom; ringed: on the front (not dominated in ms/token, mJ/token and headroom)"),
    ]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = [f"<h1>{html.escape(title)}</h1><p class=\"note\">generated {now} by tinyllm-twin; self-contained "
            "(no network needed)</p>", _summary(frames, bt),
            "<h2>Charts</h2><div class=\"charts\">",
            *(_figure(i, t, b, c) for i, t, b, c in charts), "</div>",
            "<h2>Board predictions</h2><p class=\"note\">one row per (run, board); headroom = the smaller of "
            "1 − needed/available for flash and RAM</p>",
            _table(bt.sort_values(["board", "model", "bits", "run_id"]), BOARD_TABLE, "boards"),
            "<h2>Scaling laws</h2><p class=\"note\">linear: " + html.escape(A.FORMS["linear"]) + "; power: "
            + html.escape(A.FORMS["power"]) + "</p>", _table(law_df, LAW_TABLE, "laws"),
            "<h2>KV-cache growth</h2><p class=\"note\">per run: instructions(position) = a + b·position</p>",
            _table(kv, KV_TABLE, "kv", key="run_id"),
            "<h2>Runs</h2>",
            _table(runs, RUN_TABLE, "runs", key="run_id",
                   row_class=lambda r: "failed" if r.get("status") != "ok" else "")]
    return _page(title, "".join(body))


def write_report(frames: A.Frames, out_dir: os.PathLike | str, title: str = "tinyllm-twin report") -> Path:
    """Write ``out_dir/index.html`` (the directory is created); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_text(out / "index.html", render_report(frames, title))


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------
CELL_METRICS = (("instructions_total", "int"), ("prefill_instructions", "int"), ("decode_instructions_mean", "float"),
                ("flash_bytes", "int"), ("ram_static_bytes", "int"), ("arena_bytes", "int"),
                ("stack_peak_bytes", "int"), ("model_image_bytes", "int"))
BOARD_METRICS = (("ttft_ms", "float"), ("ms_per_token", "float"), ("mj_per_token", "float"), ("headroom", "pct"))


def _latest(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.sort_values(["created_at", "run_id"]).drop_duplicates("cell_key", keep="last")


def compare(frames_a: A.Frames, frames_b: A.Frames) -> dict[str, pd.DataFrame]:
    """What changed from set A to set B, per cell (its latest run in each): ``cells`` (per metric
    ``<m>_a``, ``<m>_b``, ``<m>_delta``, ``<m>_rel``; ``changed``: any count or memory differs, or the
    status or bit-exactness does), ``boards`` (per cell × board, the predicted metrics likewise),
    ``only_a`` and ``only_b`` (cells in one set only)."""
    ra, rb = _latest(frames_a.runs), _latest(frames_b.runs)
    base = ["cell_key", "platform", "model", "bits", "kv_cache", "prompt_tokens", "tokens"]
    cols = ["run_id", "status", "matches_reference", "git_commit", *[m for m, _ in CELL_METRICS]]
    m = ra[base + cols].merge(rb[["cell_key", *cols]], on="cell_key", suffixes=("_a", "_b"))
    changed = (m["status_a"] != m["status_b"]) | (m["matches_reference_a"].astype(object) != m["matches_reference_b"].astype(object))
    for metric, _ in CELL_METRICS:
        a = pd.to_numeric(m[f"{metric}_a"], errors="coerce").astype(float)
        b = pd.to_numeric(m[f"{metric}_b"], errors="coerce").astype(float)
        m[f"{metric}_delta"] = b - a
        m[f"{metric}_rel"] = (b - a) / a.where(a != 0)
        changed |= ~((a == b) | (a.isna() & b.isna()))
    m["changed"] = changed.to_numpy(bool)
    pa = A.board_table(ra[ra["status"] == "ok"], frames_a.predictions)
    pb = A.board_table(rb[rb["status"] == "ok"], frames_b.predictions)
    keep = ["cell_key", "board", *[x for x, _ in BOARD_METRICS]]
    bm = pa[keep].merge(pb[keep], on=["cell_key", "board"], suffixes=("_a", "_b"))
    bchanged = np.zeros(len(bm), bool)
    for metric, _ in BOARD_METRICS:
        a, b = bm[f"{metric}_a"].astype(float), bm[f"{metric}_b"].astype(float)
        bm[f"{metric}_delta"] = b - a
        bm[f"{metric}_rel"] = (b - a) / a.where(a != 0)
        bchanged |= ~((a == b) | (a.isna() & b.isna())).to_numpy(bool)
    bm["changed"] = bchanged
    only_a = ra[~ra["cell_key"].isin(rb["cell_key"])][base + ["run_id", "status"]]
    only_b = rb[~rb["cell_key"].isin(ra["cell_key"])][base + ["run_id", "status"]]
    return {"cells": m.sort_values("cell_key").reset_index(drop=True),
            "boards": bm.sort_values(["cell_key", "board"]).reset_index(drop=True),
            "only_a": only_a.reset_index(drop=True), "only_b": only_b.reset_index(drop=True)}


def _direction(rec: dict, col: str, lower_is_better: set[str]) -> str:
    for suffix in ("_delta", "_rel"):
        if col.endswith(suffix):
            metric = col[: -len(suffix)]
            v = rec.get(col)
            if _is_missing(v) or v == 0:
                return ""
            good = (v < 0) == (metric in lower_is_better)
            return "better" if good else "worse"
    return ""


def chart_changes(cells: pd.DataFrame, boards: pd.DataFrame, max_rows: int = 30):
    ch = cells[cells["changed"]].dropna(subset=["decode_instructions_mean_rel"])
    if ch.empty:
        return None
    plt = _plt()
    ch = ch.reindex(ch["decode_instructions_mean_rel"].abs().sort_values(ascending=False).index)[:max_rows]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.3 * len(ch)))
    vals = ch["decode_instructions_mean_rel"].to_numpy(float) * 100
    _rects(ax, np.arange(len(ch)), vals, 0.8, horizontal=True, color=["#b00020" if v > 0 else "#1b7f3b" for v in vals])
    lim = float(np.nanmax(np.abs(vals))) * 1.1 or 1.0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-0.6, len(ch) - 0.4)
    ax.set_yticks(np.arange(len(ch)), list(ch["cell_key"]), fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("% change of decode instructions per token (B vs A)")
    ax.set_title("What changed", fontsize=10)
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.45, right=0.98, top=1 - 0.35 / h, bottom=0.5 / h)
    return _png(fig)


def render_comparison(frames_a: A.Frames, frames_b: A.Frames, labels: tuple[str, str] = ("A", "B")) -> str:
    c = compare(frames_a, frames_b)
    cells, boards = c["cells"], c["boards"]
    la, lb = (html.escape(x) for x in labels)
    lower = {m for m, _ in CELL_METRICS} | {"ttft_ms", "ms_per_token", "mj_per_token"}
    cell_cols = [("cell_key", "cell", "text"), ("status_a", f"status {la}", "text"), ("status_b", f"status {lb}", "text"),
                 ("matches_reference_b", f"bit-exact {lb}", "bool")]
    for metric, kind in CELL_METRICS:
        short = metric.replace("_instructions", "").replace("_bytes", " B").replace("_", " ")
        cell_cols += [(f"{metric}_a", f"{short} {la}", kind), (f"{metric}_b", f"{short} {lb}", kind),
                      (f"{metric}_delta", "Δ", "dint" if kind == "int" else "float"), (f"{metric}_rel", "Δ%", "dpct")]
    board_cols = [("cell_key", "cell", "text"), ("board", "board", "text")]
    for metric, kind in BOARD_METRICS:
        board_cols += [(f"{metric}_a", f"{metric} {la}", kind), (f"{metric}_b", f"{metric} {lb}", kind),
                       (f"{metric}_rel", "Δ%", "dpct")]
    n_changed = int(cells["changed"].sum())
    n_board = int(boards["changed"].sum()) if len(boards) else 0
    worst = ""
    if n_changed:
        rel = cells["instructions_total_rel"].abs()
        if rel.notna().any():
            i = rel.idxmax()
            worst = (f"; largest instruction change {cells.loc[i, 'instructions_total_rel']:+.3%} "
                     f"({html.escape(str(cells.loc[i, 'cell_key']))})")
    summary = (f"<p id=\"summary\">{len(cells)} cells in both sets; <b>{n_changed}</b> changed (counts, memory, status "
               f"or bit-exactness){worst}; {n_board} of {len(boards)} board predictions changed; "
               f"{len(c['only_a'])} cells only in {la}, {len(c['only_b'])} only in {lb}.</p>")
    commits = [", ".join(sorted({str(x) for x in f.runs["git_commit"].dropna() if x})) or "–"
               for f in (frames_a, frames_b)]
    rc = lambda r: "changed" if r.get("changed") else ""          # noqa: E731
    cc = lambda r, col: _direction(r, col, lower)                 # noqa: E731
    changed_first = cells.sort_values(["changed", "cell_key"], ascending=[False, True])
    body = [f"<h1>Comparison: {la} → {lb}</h1>",
            f"<p class=\"note\">{la}: {len(frames_a.runs)} runs, commits {html.escape(commits[0])}; {lb}: "
            f"{len(frames_b.runs)} runs, commits {html.escape(commits[1])}. Per cell the latest run of each set. "
            "Red: larger (slower, more memory); green: smaller.</p>", summary,
            _figure("chart-changes", "What changed", chart_changes(cells, boards), "decode instructions per token, B vs A"),
            "<h2>Cells</h2>", _table(changed_first, cell_cols, "cells", key="cell_key", row_class=rc, cell_class=cc,
                                    extra=("changed",)),
            "<h2>Board predictions</h2>",
            _table(boards.sort_values(["changed", "cell_key", "board"], ascending=[False, True, True]), board_cols,
                   "boards", row_class=rc, cell_class=cc, extra=("changed",)),
            f"<h2>Only in {la}</h2>", _table(c["only_a"], (("cell_key", "cell", "text"), *RUN_TABLE[:8]), "only-a",
                                             key="cell_key"),
            f"<h2>Only in {lb}</h2>", _table(c["only_b"], (("cell_key", "cell", "text"), *RUN_TABLE[:8]), "only-b",
                                             key="cell_key")]
    return _page(f"tinyllm-twin comparison {labels[0]} → {labels[1]}", "".join(body))


def write_comparison(frames_a: A.Frames, frames_b: A.Frames, out_dir: os.PathLike | str,
                     labels: tuple[str, str] = ("A", "B")) -> Path:
    """Write ``out_dir/compare.html`` (the directory is created); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_text(out / "compare.html", render_comparison(frames_a, frames_b, labels))


__all__ = ["write_report", "write_comparison", "render_report", "render_comparison", "compare"]
