"""`twin report` over a results store of 1,000 runs (issue 11: seed under 5 s, goal under 1 s), and the
output's size. Printed, not asserted.

The store is filled with 1,000 cells made from one real run of the built-in model (mps2-an386, 16
tokens) and its catalog-board predictions, varied per cell (model name, bit width, prompt length,
instruction counts, memory), so every chart and table has realistic shape. Measured three ways:
  1. in process, frames already in memory (analysis + six charts + HTML);
  2. in process, from the store file (its five queries + 1.);
  3. `twin report --db FILE -o DIR` as a fresh process (interpreter start and imports included).
Wall and CPU time are both printed: on a shared machine the CPU time is the steadier figure.

    .venv/bin/python benchmarks/report_speed.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _variants(n: int):
    """n (cell key, spec, report, predictions) from one real run, scaled per cell."""
    from twin.results.analysis import predict_reports
    from twin.runner import RunSpec, run

    base = run(RunSpec(platform="mps2-an386", tokens=16))
    base_preds = predict_reports([base])[0]
    for i in range(n):
        bits = (2, 3, 4, 8)[i % 4]
        size = (0.5, 1.0, 2.0)[(i // 4) % 3]
        prompt = (8, 11, 16)[(i // 12) % 3]
        s = size * (0.8 + 0.05 * bits)
        r = copy.deepcopy(base)
        ins = r["instructions"]
        ins["by_phase"]["decode"] = [int(x * s) + i % 7 for x in ins["by_phase"]["decode"]]
        ins["by_phase"]["prefill"] = int(ins["by_phase"]["prefill"] * s * prompt / 11)
        ins["total"] = ins["by_phase"]["prefill"] + sum(ins["by_phase"]["decode"])
        for ph in ("prefill", "decode"):
            ins["by_phase_class"][ph] = {c: int(v * s) for c, v in ins["by_phase_class"][ph].items()}
        r["functions"] = [{"name": f["name"], "instructions": int(f["instructions"] * s)} for f in r["functions"]]
        r["model"] = f"synthetic-{size:g}x-q{bits}g32"
        r["bits"] = bits
        r["prompt_tokens"] = r["prompt_tokens"][:1] * prompt
        r["memory"]["model_image_bytes"] = int(r["memory"]["model_image_bytes"] * size * (bits + 1) / 5)
        preds = []
        for p in base_preds:
            p = copy.deepcopy(p)
            for key in ("ttft_seconds", "token_seconds", "energy_per_token_joules"):
                for k in ("value", "low", "high"):
                    if p[key].get(k) is not None:
                        p[key][k] *= s
            for k in ("value", "low", "high"):
                if p["tokens_per_second"].get(k) is not None:
                    p["tokens_per_second"][k] /= s
            p["memory"]["flash_bytes"] = r["memory"]["flash_bytes"] + r["memory"]["model_image_bytes"]
            preds.append(p)
        key = f"mps2-an386|{r['model']}|p{prompt}|t16|{i}"
        yield key, {"platform": "mps2-an386", "bits": bits, "prompt_tokens": prompt, "tokens": 16}, r, preds


def _timed(fn, repeat: int = 3):
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, min(walls), statistics.median(walls), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()

    from twin.results import analysis, report
    from twin.results.store import ResultsStore

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        db = d / "bench.sqlite"
        t = time.perf_counter()
        with ResultsStore(db) as st:
            for key, spec, r, preds in _variants(args.runs):
                st.record(key, spec, r, preds, None, {"git_commit": "bench"})
        fill = time.perf_counter() - t
        store_bytes = sum(p.stat().st_size for p in d.glob("bench.sqlite*"))

        with ResultsStore(db) as st:
            frames = analysis.frames_from_store(st)
        n_pred = len(frames.predictions)
        report._plt()       # matplotlib imported once, as any process does (measured in 3.)
        path, best, med, cpu = _timed(lambda: report.write_report(frames, d / "mem"))
        html_bytes = path.stat().st_size

        def from_store():
            with ResultsStore(db) as st:
                return report.write_report(analysis.frames_from_store(st), d / "store")

        _, sbest, smed, scpu = _timed(from_store)
        twin = ROOT / ".venv" / "bin" / "twin"
        cmd = [str(twin) if twin.exists() else sys.executable, *([] if twin.exists() else ["-m", "twin.cli.main"]),
               "report", "--db", str(db), "-o", str(d / "cli")]

        def cli():
            subprocess.run(cmd, check=True, capture_output=True)

        _, cbest, cmed, _ = _timed(cli)

    print(f"twin report over {args.runs:,} runs ({n_pred:,} board predictions, 16 tokens each)")
    print(f"  store filled in {fill:.1f} s ({args.runs / fill:,.0f} cells/s, one transaction each); "
          f"store size {store_bytes / 1e6:.2f} MB = {store_bytes / args.runs * 1000 / 1e6:.2f} MB per 1,000 runs")
    print(f"  1. frames in memory -> HTML   best {best:.3f} s, median {med:.3f} s wall; {cpu:.3f} s CPU")
    print(f"  2. store file -> HTML         best {sbest:.3f} s, median {smed:.3f} s wall; {scpu:.3f} s CPU")
    print(f"  3. `twin report` process      best {cbest:.3f} s, median {cmed:.3f} s wall (interpreter + imports)")
    print(f"  page size {html_bytes / 1e6:.2f} MB (one self-contained HTML, six PNG charts, tables of every run "
          "and prediction)")
    print("  goal: under 1 s (seed: under 5 s)")


if __name__ == "__main__":
    main()
