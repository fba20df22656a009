"""The CI gate: a matrix of runs against a baseline (`twin ci`, docs/ci.md).

The twin's instruction counts are deterministic, so they are compared exactly: any change is
reported, and one that grows past the threshold fails the gate. Memory (flash, static RAM, arena,
stack) and the predicted latency and energy on every catalog board fail when they grow past the
threshold. A cell that fails, or whose tokens differ from the host reference, fails; a baseline cell
that is no longer run is missing (a failure); a cell the baseline lacks is new (reported).

    result = compare(current_metrics(store, cells), load_baseline("twin-baseline.json"), threshold=2.0)
    result.exit_code   # 0 pass, 1 regression
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from twin import atomic
from twin.results.engine import Cell, git_commit, matrix
from twin.results.store import ResultsStore

BASELINE_FORMAT = "twin-ci-baseline"
BASELINE_VERSION = 1
COUNTS = ("instructions_total", "prefill_instructions", "decode_instructions_mean")
MEMORY = ("flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes")
PREDICTED = ("ttft_s", "token_s", "energy_per_token_j")
FAILING = ("regression", "failed", "missing", "mismatch")


class GateError(ValueError):
    """The gate cannot run as set up (config, baseline, matrix): exit 2; the message says what to do."""


@dataclass(frozen=True)
class Config:
    cells: list[Cell]
    threshold_percent: float = 2.0


def load_config(path: Path | None, default_platforms: list[str]) -> Config:
    """``twin-ci.yaml``: ``matrix: {platforms, models, bits, prompt_lengths, tokens}`` and
    ``threshold_percent``; without a file, the built-in model at 4 bits, 8 tokens, on ``default_platforms``."""
    data: dict = {}
    if path is not None:
        if not path.is_file():
            raise GateError(f"CI config {path} not found: write one (docs/ci.md) or leave out --config")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GateError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise GateError(f"{path}: expected a mapping with 'matrix' and 'threshold_percent'")
    m = data.get("matrix", {}) or {}
    if not isinstance(m, dict):
        raise GateError(f"{path}: 'matrix' must be a mapping of platforms, models, bits, prompt_lengths, tokens")
    unknown = set(m) - {"platforms", "models", "bits", "prompt_lengths", "tokens"}
    if unknown:
        raise GateError(f"{path}: unknown matrix field(s) {', '.join(sorted(unknown))}")

    def items(key: str, default: list) -> list:
        v = m.get(key, default)
        return v if isinstance(v, list) else [v]

    threshold = data.get("threshold_percent", 2.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (0 <= threshold < 1000):
        raise GateError(f"{path}: threshold_percent must be a number in [0, 1000), got {threshold!r}")
    try:
        cells = matrix(items("platforms", default_platforms), items("models", ["builtin"]), items("bits", [4]),
                       items("prompt_lengths", [None]), m.get("tokens", 8))
    except (TypeError, ValueError) as exc:
        raise GateError(f"{path}: the matrix is malformed: {exc}") from None
    if not cells:
        raise GateError(f"{path}: the matrix has no cells")
    return Config(cells, float(threshold))


def current_metrics(store: ResultsStore, cells: list[Cell]) -> dict[str, dict]:
    """Per cell key: status, error, matches_reference, counts, memory, predictions per board."""
    runs = store.runs()
    preds = store.predictions()
    out: dict[str, dict] = {}
    wanted = {c.key for c in cells}
    for r in runs.to_dict("records"):
        key = r["cell_key"]
        if key not in wanted:
            continue
        cell = {"status": r["status"], "error": r.get("error"),
                "matches_reference": bool(r.get("matches_reference")) if r["status"] == "ok" else None,
                "counts": {k: _num(r.get(k)) for k in COUNTS}, "memory": {k: _num(r.get(k)) for k in MEMORY},
                "predictions": {}}
        for p in preds[preds["run_id"] == r["run_id"]].to_dict("records"):
            cell["predictions"][p["board"]] = {k: _num(p.get(k)) for k in PREDICTED}
        out[key] = cell
    return out


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ----------------------------------------------------------------------------------------- baseline
def write_baseline(metrics: dict[str, dict], path: Path, threshold: float) -> Path:
    ok = {k: v for k, v in metrics.items() if v["status"] == "ok"}
    doc = {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "git_commit": git_commit(),
           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "threshold_percent": threshold, "cells": ok}
    return atomic.write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load_baseline(path: Path) -> dict:
    if not path.is_file():
        raise GateError(f"baseline {path} not found: record one with `twin ci --update-baseline --baseline {path}`")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GateError(f"baseline {path} is not valid JSON ({exc}): record it again with --update-baseline") from None
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT or not isinstance(doc.get("cells"), dict):
        raise GateError(f"{path} is not a twin CI baseline (format {BASELINE_FORMAT!r}): record one with "
                        "--update-baseline")
    if doc.get("version") != BASELINE_VERSION:
        raise GateError(f"{path}: baseline version {doc.get('version')!r}, this twin reads {BASELINE_VERSION}")
    return doc


# ----------------------------------------------------------------------------------------- comparison
@dataclass
class Finding:
    cell: str
    group: str          # counts | memory | prediction:<board> | cell
    metric: str
    baseline: float | None
    current: float | None
    verdict: str        # regression | improved | changed | new | missing | failed | mismatch
    message: str = ""

    @property
    def change_percent(self) -> float | None:
        if self.baseline in (None, 0) or self.current is None:
            return None
        return 100.0 * (self.current - self.baseline) / self.baseline

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING


@dataclass
class GateResult:
    threshold_percent: float
    findings: list[Finding] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(f.failing for f in self.findings) else 0

    def failing_cells(self) -> list[str]:
        return sorted({f.cell for f in self.findings if f.failing})

    def to_json(self) -> dict:
        return {"passed": self.exit_code == 0, "threshold_percent": self.threshold_percent,
                "cells": self.cells, "failing_cells": self.failing_cells(),
                "findings": [{"cell": f.cell, "group": f.group, "metric": f.metric, "baseline": f.baseline,
                              "current": f.current, "change_percent": f.change_percent, "verdict": f.verdict,
                              "message": f.message} for f in self.findings]}


def compare(current: dict[str, dict], baseline: dict, threshold: float) -> GateResult:
    res = GateResult(threshold, cells=sorted(set(current) | set(baseline["cells"])))
    base_cells = baseline["cells"]
    for key in res.cells:
        cur, base = current.get(key), base_cells.get(key)
        if cur is None:
            res.findings.append(Finding(key, "cell", "run", None, None, "missing",
                                        "in the baseline but not run now (the matrix changed?)"))
            continue
        if cur["status"] != "ok":
            res.findings.append(Finding(key, "cell", "run", None, None, "failed", str(cur.get("error") or "failed")))
            continue
        if cur.get("matches_reference") is False:
            res.findings.append(Finding(key, "cell", "tokens", None, None, "mismatch",
                                        "the firmware's tokens differ from the host reference"))
        if base is None:
            res.findings.append(Finding(key, "cell", "run", None, None, "new", "not in the baseline"))
            continue
        for group, exact in (("counts", True), ("memory", False)):
            for metric, b in (base.get(group) or {}).items():
                _judge(res, key, group, metric, b, cur[group].get(metric), threshold, exact)
        for board, bp in (base.get("predictions") or {}).items():
            cp = cur["predictions"].get(board, {})
            for metric, b in bp.items():
                _judge(res, key, f"prediction:{board}", metric, b, cp.get(metric), threshold, False)
    return res


def _judge(res: GateResult, cell: str, group: str, metric: str, base, cur, threshold: float, exact: bool) -> None:
    if base is None and cur is None:
        return
    if base is None or cur is None:
        res.findings.append(Finding(cell, group, metric, base, cur, "changed",
                                    "now measured" if base is None else "no longer measured"))
        return
    if cur == base:
        return
    f = Finding(cell, group, metric, float(base), float(cur), "changed")
    change = f.change_percent
    if change is not None and change > threshold:
        f.verdict = "regression"
        f.message = f"+{change:.2f}% (threshold {threshold:g}%)"
    elif cur < base:
        f.verdict = "improved"
        f.message = f"{change:.2f}%" if change is not None else "lower"
    else:
        f.message = (f"{change:+.3f}% (within {threshold:g}%)" if change is not None else "changed") + \
                    (": counts are deterministic, so any change is reported" if exact else "")
    res.findings.append(f)


# ----------------------------------------------------------------------------------------- reports
def junit_xml(result: GateResult) -> str:
    """One testsuite, one testcase per cell (failures name each failing metric)."""
    suite = ET.Element("testsuite", name="twin-ci", tests=str(len(result.cells)),
                       failures=str(len(result.failing_cells())))
    for cell in result.cells:
        case = ET.SubElement(suite, "testcase", classname="twin.ci", name=cell)
        failing = [f for f in result.findings if f.cell == cell and f.failing]
        if failing:
            text = "\n".join(f"{f.group} {f.metric}: {f.verdict} {f.message}".strip() for f in failing)
            ET.SubElement(case, "failure", message=f"{len(failing)} regression(s)", type="regression").text = text
        others = [f for f in result.findings if f.cell == cell and not f.failing]
        if others:
            ET.SubElement(case, "system-out").text = "\n".join(
                f"{f.group} {f.metric}: {f.verdict} {f.message}".strip() for f in others)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def markdown_summary(result: GateResult) -> str:
    head = "✅ twin CI: no regression" if result.exit_code == 0 else \
        f"❌ twin CI: {len(result.failing_cells())} of {len(result.cells)} cells regressed"
    lines = [f"### {head}", "", f"Threshold {result.threshold_percent:g}%; instruction counts are compared exactly.", ""]
    shown = [f for f in result.findings if f.verdict != "new"] + [f for f in result.findings if f.verdict == "new"]
    if not shown:
        lines.append("Every count, memory figure and prediction equals the baseline.")
        return "\n".join(lines) + "\n"
    lines += ["| cell | what | baseline | now | change | verdict |", "|---|---|---|---|---|---|"]
    for f in shown:
        ch = "" if f.change_percent is None else f"{f.change_percent:+.2f}%"
        lines.append(f"| `{f.cell}` | {f.group} {f.metric} | {_fmt(f.baseline)} | {_fmt(f.current)} | {ch} | "
                     f"{'**' + f.verdict + '**' if f.failing else f.verdict} {f.message} |")
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"
