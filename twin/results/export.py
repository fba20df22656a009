"""Trace exports of one run (docs/results.md "Exports").

- ``speedscope``: the per-function profile in speedscope's file format
  (https://www.speedscope.app/file-format-schema.json), "sampled" profiles: one sample per
  (phase, function) stack weighted by its instructions; a second profile weighted by predicted cycles on
  a board (the board's predicted cycles of the whole inference spread over the functions in proportion
  to their instructions — the twin counts functions, not their class mix, so the per-function cycles
  share one CPI); a third by instruction class per phase. Opens in https://www.speedscope.app (or the
  offline ``speedscope`` npm CLI).
- ``chrome_trace``: the phases and decoded tokens as Chrome trace-event JSON ("X" complete events,
  ``ts``/``dur`` in µs, plus a counter track of instructions per token), which Perfetto
  (https://ui.perfetto.dev) and chrome://tracing open. Times are the board prediction's (prefill from
  time to first token less one token, each token the per-token time scaled by its own instruction
  count), or without one the platform's clock at one instruction per cycle, as the trace's metadata says.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from twin.atomic import write_text

from . import analysis as A

SPEEDSCOPE_SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"


class ExportError(ValueError):
    """The run cannot be exported; the message says why."""


def _run(frames: A.Frames, run_id) -> pd.Series:
    runs = frames.runs
    hit = runs[runs["run_id"].astype(str) == str(run_id)]
    if hit.empty:
        some = ", ".join(map(str, runs["run_id"].head(8)))
        raise ExportError(f"no run {run_id!r} in the results (runs: {some or 'none'})")
    r = hit.iloc[-1]
    if r["status"] != "ok":
        raise ExportError(f"run {run_id} failed ({r['error']}): it has no profile to export")
    return r


def _prediction(frames: A.Frames, run: pd.Series, board: str | None) -> pd.Series | None:
    p = frames.predictions
    p = p[p["run_id"].astype(str) == str(run["run_id"])]
    if board is not None:
        hit = p[p["board"] == board]
        if hit.empty:
            have = ", ".join(sorted(p["board"].astype(str))) or "none"
            raise ExportError(f"run {run['run_id']} has no prediction for board {board!r} (it has: {have})")
        return hit.iloc[0]
    if p.empty:
        return None
    same = p[p["board"] == run["platform"]]
    return (same if not same.empty else p).iloc[0]


def _inference_cycles(run: pd.Series, pred: pd.Series) -> float:
    """The board's predicted cycles of prefill + every decoded token: (TTFT + (n − 1)·token) × clock."""
    n = int(run["tokens"])
    seconds = float(pred["ttft_s"]) + max(n - 1, 0) * float(pred["token_s"])
    return seconds * float(pred["clock_mhz"]) * 1e6


def speedscope(frames: A.Frames, run_id, board: str | None = None) -> dict:
    """The speedscope file (a dict) of run ``run_id``: instructions per function, predicted cycles per
    function on ``board`` (default: the run's platform if predicted, else its first prediction; none:
    no cycles profile), and instructions by class per phase."""
    run = _run(frames, run_id)
    rid = str(run["run_id"])
    fn = frames.functions[frames.functions["run_id"].astype(str) == rid]
    if fn.empty:
        raise ExportError(f"run {run_id} has no per-function counts")
    fn = fn.sort_values(["phase", "instructions", "function"], ascending=[True, False, True])
    cl = frames.classes[frames.classes["run_id"].astype(str) == rid]
    names: list[str] = []
    index: dict[str, int] = {}

    def frame(name: str) -> int:
        if name not in index:
            index[name] = len(names)
            names.append(name)
        return index[name]

    stacks = [[frame(str(ph)), frame(str(f))] for ph, f in zip(fn["phase"], fn["function"], strict=True)]
    weights = [int(x) for x in fn["instructions"]]
    label = f"{run['platform']} · {run['model']} q{int(run['bits'])}"
    profiles = [{"type": "sampled", "name": f"instructions · {label}", "unit": "none", "startValue": 0,
                 "endValue": sum(weights), "samples": stacks, "weights": weights}]
    pred = _prediction(frames, run, board)
    if pred is not None and all(math.isfinite(float(pred[k])) for k in ("ttft_s", "token_s", "clock_mhz")):
        total_ins = float(sum(weights))
        cpi = _inference_cycles(run, pred) / total_ins if total_ins else 0.0
        cyc = [w * cpi for w in weights]
        profiles.append({"type": "sampled", "name": f"predicted cycles on {pred['board']} ({pred['calibration']}, "
                         f"{float(pred['clock_mhz']):g} MHz; one CPI = {cpi:.3f} for every function)",
                         "unit": "none", "startValue": 0, "endValue": sum(cyc), "samples": stacks, "weights": cyc})
    if not cl.empty:
        cl = cl.sort_values(["phase", "cls"])
        cstacks = [[frame(f"phase {ph}"), frame(f"class {c}")] for ph, c in zip(cl["phase"], cl["cls"], strict=True)]
        cw = [int(x) for x in cl["instructions"]]
        profiles.append({"type": "sampled", "name": f"instruction classes · {label}", "unit": "none",
                         "startValue": 0, "endValue": sum(cw), "samples": cstacks, "weights": cw})
    return {"$schema": SPEEDSCOPE_SCHEMA_URL, "shared": {"frames": [{"name": n} for n in names]},
            "profiles": profiles, "name": f"tinyllm-twin run {rid}: {label}", "activeProfileIndex": 0,
            "exporter": "tinyllm-twin"}


def chrome_trace(frames: A.Frames, run_id, board: str | None = None) -> dict:
    """The Chrome trace-event file (a dict) of run ``run_id``: "generate" ⊃ "prefill", "token 0", … as
    complete events on one track, and a counter of instructions per decoded token."""
    run = _run(frames, run_id)
    rid = str(run["run_id"])
    tc = frames.token_counts[frames.token_counts["run_id"].astype(str) == rid].sort_values("position")
    prefill = int(run["prefill_instructions"])
    decode_mean = float(run["decode_instructions_mean"])
    pred = _prediction(frames, run, board)
    if pred is not None and all(math.isfinite(float(pred[k])) for k in ("ttft_s", "token_s")):
        token_s = float(pred["token_s"])
        prefill_s = max(float(pred["ttft_s"]) - token_s, 0.0)
        per_ins_decode = token_s / decode_mean if decode_mean else 0.0
        basis = (f"predicted on {pred['board']} at {float(pred['clock_mhz']):g} MHz ({pred['calibration']}): prefill = "
                 "TTFT − one token, each token = time per token × its instructions / the mean")
    else:
        from twin.platforms import get_platform

        clock = float(get_platform(str(run["platform"])).clock_hz)
        prefill_s = prefill / clock
        per_ins_decode = 1.0 / clock
        basis = f"no prediction: {run['platform']}'s nominal {clock / 1e6:g} MHz at one instruction per cycle"
    us = 1e6
    pid, tid = 1, 1
    label = f"{run['platform']} · {run['model']} q{int(run['bits'])}"
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"tinyllm-twin {label}"}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": "generation"}},
    ]
    body = [{"name": "prefill", "cat": "phase", "ph": "X", "ts": 0.0, "dur": prefill_s * us, "pid": pid, "tid": tid,
             "args": {"instructions": prefill, "prompt_tokens": int(run["prompt_tokens"])}}]
    t = prefill_s * us
    for pos, ins in zip(tc["position"], tc["instructions"], strict=True):
        dur = int(ins) * per_ins_decode * us
        body.append({"name": f"token {int(pos)}", "cat": "decode", "ph": "X", "ts": t, "dur": dur, "pid": pid,
                     "tid": tid, "args": {"position": int(pos), "context": int(run["prompt_tokens"]) + int(pos),
                                          "instructions": int(ins)}})
        body.append({"name": "instructions per token", "cat": "decode", "ph": "C", "ts": t, "pid": pid, "tid": tid,
                     "args": {"instructions": int(ins)}})
        t += dur
    events.append({"name": "generate", "cat": "run", "ph": "X", "ts": 0.0, "dur": t, "pid": pid, "tid": tid,
                   "args": {"run_id": rid, "cell_key": str(run["cell_key"]),
                            "instructions": int(run["instructions_total"]), "tokens": int(run["tokens"])}})
    events.extend(body)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"exporter": "tinyllm-twin", "run_id": rid, "times": basis,
                          "git_commit": str(run["git_commit"] or ""), "build_id": str(run["build_id"] or "")}}


FORMATS = {"speedscope": speedscope, "perfetto": chrome_trace}


def write_export(frames: A.Frames, run_id, fmt: str, path: os.PathLike | str, board: str | None = None) -> Path:
    """Write ``fmt`` ("speedscope" or "perfetto") of run ``run_id`` to ``path`` (atomically)."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    doc = FORMATS[fmt](frames, run_id, board)
    return write_text(path, json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n")
