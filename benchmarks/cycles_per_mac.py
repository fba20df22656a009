"""Cycles per multiply-accumulate per decoded token, by the twin's own prior, on catalog boards of six
cores: the firmware's portable reference kernels (`ref`, about what llama2.c's runq.c costs) against
the board's optimized kernel set, measured in one run; with ``--baseline REV`` also the optimized set
of another revision of this repository (a git worktree, the same script run there), as before -> after.

    .venv/bin/python benchmarks/cycles_per_mac.py [--boards stm32f4-disco,...] [--bits 4,8]
                                                 [--tokens 8] [--top 6] [--terms] [--baseline REV] [--json]

Per board and weight width it prints, for each build: instructions per decoded token, the prior's
cycles per decoded token (`twin predict`: the board's clock, flash wait states and its caches, simulated
where the platform file gives their geometry, else assumed hit rates), cycles
per MAC and, for the --top functions with the most predicted cycles, their instructions and predicted
cycles per decoded token, their cycles per MAC and share of the token's cycles
(`calibration.predict.function_cycles`: the same prior applied to each function's class mix, taken
branches and instruction bytes); one more line holds what no function can be given (the flash-load
wait states, and the assumed taken share of the conditional branches whose split was not resolved),
so the lines add up to the token's cycles. With --baseline REV each function shows before -> now;
a revision without per-function cycles gives its instructions only. With --terms also where the
prior's cycles go (per MAC: each instruction class, taken branches, fetch and flash-load wait
states). A MAC is one weight multiply-accumulate of the token's matrix-vector products (n_layers x
(q, k, v, o, w1, w2, w3) + the classifier); the attention's dot products, norms and softmax are in
the cycles but not in the MAC count. Counts are exact (QEMU + plugin); the cycles are the prior's,
not a bench measurement (docs/calibration.md).
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
    # per function, decode only; with the memory traffic, so that the flash loads are the counted ones
    with profiled_session(proxy, build_firmware(proxy).elf, image_path, mem_traffic=True) as s:
        phases, _ = s.device.run(prompt, tokens)
    kinds = [ph.kind for ph in (*s.boot_phases, *phases)]
    decode = [s.segments[2 * i + 1] for i, k in enumerate(kinds) if k == PhaseKind.DECODE]
    total = sum_profiles(decode)
    n = len(decode)
    cycles = prediction["cycles"]["per_token"]
    macs = macs_per_token(read_image(image).config)
    per_function = per_function_cycles(plat, decode, proxy.id)
    if per_function is not None:
        rebuilt = sum(per_function["functions"].values()) + per_function["unattributed"]
        if abs(rebuilt - cycles) > 1e-9 * cycles:
            raise SystemExit(f"{board} {bits}-bit {kernels}: the functions' cycles add up to {rebuilt:,.1f}, "
                             f"not the token's {cycles:,.1f}")
    return {
        "board": board, "proxy": proxy.id, "bits": bits, "kernels": kernels,
        "matches_reference": report["matches_reference"],
        "instructions_per_token": total.total / n,
        "cycles_per_token": cycles, "macs_per_token": macs, "cycles_per_mac": cycles / macs,
        "clock_mhz": prediction.get("clock_mhz"),
        "cycle_terms": prediction["cycles"].get("per_token_terms", {}),   # older revisions: none
        "functions": {f: v / n for f, v in sorted(total.by_function.items(), key=lambda kv: -kv[1])},
        "function_cycles": None if per_function is None else per_function["functions"],   # older: None
        "unattributed_cycles": None if per_function is None else per_function["unattributed"],
        "unresolved_branches": None if per_function is None else per_function["unresolved"],
        "flash_by_function": getattr(total, "mem_by_function", None) is not None,   # older trees: False
    }


def per_function_cycles(plat, decode, ran_on: str) -> dict | None:
    """The prior's cycles per decoded token per function, or None where the measured tree has no
    ``calibration.predict.function_cycles`` (a --baseline revision from before it)."""
    try:
        from calibration.predict import function_cycles
    except ImportError:
        return None
    fc = function_cycles(plat, decode, ran_on=ran_on)
    return {"functions": {f: v["cycles"] for f, v in fc["functions"].items()},
            "unattributed": fc["unattributed"]["cycles"],
            "unresolved": fc["unattributed"]["branches_unresolved_by_function"]}


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


def print_functions(r: dict, b: dict | None, args) -> None:
    """The top functions of one build: instructions and predicted cycles per decoded token, cycles per
    MAC, share of the token's cycles; before -> now against the baseline's build ``b``."""
    fc = r.get("function_cycles")
    bf, bc = (b["functions"], b.get("function_cycles")) if b else ({}, None)
    if fc is None:      # a tree without per-function cycles: its instructions, as before
        top = list(r["functions"].items())[: args.top]
        print("      " + " · ".join(f"{f} {v:,.0f}" + (f" (was {bf[f]:,.0f})" if f in bf else "") for f, v in top))
        return
    macs, cycles = r["macs_per_token"], r["cycles_per_token"]
    print(f"      {'function':30} {'instr/token':>12} {'cycles/token':>13} {'cycles/MAC':>10} {'share':>6}"
          + (f"   before ({args.baseline}) -> now" if b else ""))
    for f, c in list(fc.items())[: args.top]:
        line = (f"      {f:30} {r['functions'].get(f, 0):12,.0f} {c:13,.0f} {c / macs:10.3f} "
                f"{c / cycles:6.1%}")
        if b:
            was_i = f"{bf[f]:,.0f}" if f in bf else "-"
            line += f"   instr {was_i} -> {r['functions'].get(f, 0):,.0f}"
            if bc is not None:
                line += f" · cycles {bc[f]:,.0f} -> {c:,.0f}" if f in bc else f" · cycles - -> {c:,.0f}"
        print(line)
    for f in [f for f in list(bf)[: args.top] if f not in r["functions"]]:    # the baseline's, gone now
        was_c = f" · cycles {bc[f]:,.0f} -> 0" if bc is not None and f in bc else ""
        print(f"      {f:30} {0:12,} {0:13,} {'':10} {'':6}   instr {bf[f]:,.0f} -> 0{was_c} (gone)")
    rest = sum(list(fc.values())[args.top:])
    print(f"      {'(the other functions)':30} {'':12} {rest:13,.0f} {rest / macs:10.3f} {rest / cycles:6.1%}")
    un = r["unattributed_cycles"]
    why = [] if r.get("flash_by_function") else ["flash-load wait states"]   # older trees: not per function
    if r["unresolved_branches"]:
        why.append("taken_fraction x unresolved conditional branches ("
                   + ", ".join(f"{f} {v:,.0f}" for f, v in r["unresolved_branches"].items()) + " per token)")
    why = "; ".join(why)
    line = f"      {'(not attributed to a function)':30} {'':12} {un:13,.0f} {un / macs:10.3f} {un / cycles:6.1%}   {why}"
    print(line)
    if b and bc is None:
        print(f"      ({args.baseline} has no per-function cycles: instructions only before)")


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
        print_functions(r, b, args)
        if args.terms:
            terms = sorted(r["cycle_terms"].items(), key=lambda kv: -kv[1])
            print("      cycles: " + " · ".join(f"{t.removeprefix('n_')} {v / r['macs_per_token']:.2f}/MAC"
                                              for t, v in terms if v > 0))
    print(f"\nMACs per decoded token (weights only): {rows[0]['macs_per_token']:,}; instructions exact, "
          "cycles by the prior (twin predict)")


if __name__ == "__main__":
    main()
