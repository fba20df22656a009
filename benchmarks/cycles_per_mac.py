"""Cycles per multiply-accumulate per decoded token, by the twin's own prior, on catalog boards of six
cores: the firmware's portable reference kernels (`ref`, about what llama2.c's runq.c costs) against
the board's optimized kernel set, measured in one run; with ``--baseline REV`` also the optimized set
of another revision of this repository (a git worktree, the same script run there), as before -> after.

    .venv/bin/python benchmarks/cycles_per_mac.py [--boards stm32f4-disco,...] [--bits 4,8]
                                                 [--tokens 8] [--top 6] [--terms] [--baseline REV] [--json]

Per board and weight width it prints, for each build: instructions per decoded token, the prior's
cycles per decoded token (`twin predict`: the board's clock, flash wait states and hit rates), cycles
per MAC, the functions that run most per decoded token and, with --terms, where the prior's cycles go
(per MAC: each instruction class, taken branches, fetch and flash-load wait states). A MAC is one weight multiply-accumulate
of the token's matrix-vector products (n_layers x (q, k, v, o, w1, w2, w3) + the classifier); the
attention's dot products, norms and softmax are in the cycles but not in the MAC count. Counts are
exact (QEMU + plugin); the cycles are the prior's, not a bench measurement (docs/calibration.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
BOARDS = ("stm32f4-disco", "nucleo-h743zi", "b-u585i-iot02a", "alif-ensemble-e3", "esp32-c3-devkit", "rpi-pico")


def macs_per_token(config) -> int:
    """Weight multiply-accumulates of one decoded token."""
    kv_dim = config.dim // config.n_heads * config.n_kv_heads
    layer = 2 * config.dim * config.dim + 2 * config.dim * kv_dim + 3 * config.dim * config.hidden_dim
    return config.n_layers * layer + config.vocab_size * config.dim


def measure(board: str, bits: int, tokens: int, kernels: str) -> dict:
    """One build of ``board``'s proxy with ``kernels``: per-token decode counts and the prior's cycles."""
    from calibration.predict import counts_from_report, predict_from_counts
    from twin.device.build import build_firmware
    from twin.device.protocol import PhaseKind
    from twin.model import modelgen
    from twin.model.image import read_image
    from twin.platforms import get_platform, with_kernels
    from twin.profile.counts import sum_profiles
    from twin.runner import RunSpec, model_image, model_tokenizer, profiled_session, run

    plat = get_platform(board)
    proxy = with_kernels(get_platform(plat.counts_platform), kernels)
    spec = RunSpec(platform=proxy.id, bits=bits, tokens=tokens, kernels=kernels, mem_traffic=True, board=False)
    report = run(spec)
    prediction = predict_from_counts(plat, counts_from_report(report))
    image_path, image, _ = model_image(spec)
    tokenizer = model_tokenizer(spec.model)
    prompt = tokenizer.encode(spec.prompt) if tokenizer else modelgen.encode(spec.prompt)
    with profiled_session(proxy, build_firmware(proxy).elf, image_path) as s:    # per function, decode only
        phases, _ = s.device.run(prompt, tokens)
    kinds = [ph.kind for ph in (*s.boot_phases, *phases)]
    decode = [s.segments[2 * i + 1] for i, k in enumerate(kinds) if k == PhaseKind.DECODE]
    total = sum_profiles(decode)
    n = len(decode)
    cycles = prediction["cycles"]["per_token"]
    macs = macs_per_token(read_image(image).config)
    return {
        "board": board, "proxy": proxy.id, "bits": bits, "kernels": kernels,
        "matches_reference": report["matches_reference"],
        "instructions_per_token": total.total / n,
        "cycles_per_token": cycles, "macs_per_token": macs, "cycles_per_mac": cycles / macs,
        "clock_mhz": prediction.get("clock_mhz"),
        "cycle_terms": prediction["cycles"].get("per_token_terms", {}),   # older revisions: none
        "functions": {f: v / n for f, v in sorted(total.by_function.items(), key=lambda kv: -kv[1])},
    }


def measure_all(boards: list[str], bits: list[int], tokens: int) -> list[dict]:
    from calibration.predict import counts_kernels
    from twin.platforms import get_platform

    rows = []
    for board in boards:
        optimized = counts_kernels(get_platform(board))
        for b in bits:
            for k in dict.fromkeys(("ref", optimized)):
                rows.append(measure(board, b, tokens, k))
    return rows


def baseline_rows(rev: str, args) -> list[dict]:
    """The same measurement at revision ``rev`` (a temporary git worktree, this script run there)."""
    root = HERE.parents[1]
    with tempfile.TemporaryDirectory(prefix="twin-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            out = subprocess.run([sys.executable, str(HERE), "--root", str(tree), "--boards", ",".join(args.boards),
                                  "--bits", ",".join(map(str, args.bits)), "--tokens", str(args.tokens), "--json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the baseline run at {rev} failed:\n{out.stderr.strip()}")
            return json.loads(out.stdout)["rows"]
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", type=lambda s: s.split(","), default=list(BOARDS))
    ap.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[4, 8])
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--top", type=int, default=6, help="functions shown per build")
    ap.add_argument("--terms", action="store_true", help="also where the prior's cycles go (its terms)")
    ap.add_argument("--baseline", metavar="REV", help="also measure this git revision's optimized kernels")
    ap.add_argument("--root", type=Path, default=HERE.parents[1], help=argparse.SUPPRESS)   # the tree measured
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))

    rows = measure_all(args.boards, args.bits, args.tokens)
    base = baseline_rows(args.baseline, args) if args.baseline else []
    if args.json:
        print(json.dumps({"rows": rows, "baseline": args.baseline, "baseline_rows": base}))
        return
    def earlier(r: dict) -> dict | None:
        """The baseline's build in the same role: its ref, or its optimized set (ref where it had none)."""
        same = [b for b in base if (b["board"], b["bits"]) == (r["board"], r["bits"])]
        if r["kernels"] == "ref":
            return next((b for b in same if b["kernels"] == "ref"), None)
        return next((b for b in same if b["kernels"] != "ref"), next(iter(same), None))

    print(f"{'board':18} {'bits':>4} {'kernels':8} {'instr/token':>12} {'cycles/token':>13} {'cycles/MAC':>10}"
          + ("   before (" + args.baseline + ") -> now" if base else ""))
    for r in rows:
        line = (f"{r['board']:18} {r['bits']:>4} {r['kernels']:8} {r['instructions_per_token']:12,.0f} "
                f"{r['cycles_per_token']:13,.0f} {r['cycles_per_mac']:10.2f}")
        b = earlier(r)
        if b:
            was = "" if b["kernels"] == r["kernels"] else f" ({b['kernels']})"
            line += (f"   {b['cycles_per_mac']:.2f}{was} -> {r['cycles_per_mac']:.2f} cycles/MAC "
                     f"({b['cycles_per_token'] / r['cycles_per_token']:.2f}x)")
        if not r["matches_reference"]:
            line += "   TOKENS DIFFER FROM THE REFERENCE"
        print(line)
        top = list(r["functions"].items())[: args.top]
        bf = b["functions"] if b else {}
        print("      " + " · ".join(f"{f} {v:,.0f}" + (f" (was {bf[f]:,.0f})" if f in bf else "") for f, v in top))
        if args.terms:
            terms = sorted(r["cycle_terms"].items(), key=lambda kv: -kv[1])
            print("      cycles: " + " · ".join(f"{t.removeprefix('n_')} {v / r['macs_per_token']:.2f}/MAC"
                                              for t, v in terms if v > 0))
    print(f"\nMACs per decoded token (weights only): {rows[0]['macs_per_token']:,}; instructions exact, "
          "cycles by the prior (twin predict)")


if __name__ == "__main__":
    main()
