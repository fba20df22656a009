"""The optimized kernel sets against the reference kernels, measured in one run: per platform, the same
platform built twice (its `kernels:` field set to ref and to its own optimized set -- arm_dsp on the
M4F/M7/M33, mve (Helium) on the M55 of mps3-an547 -- nothing else changed), the same model image and
prompt, greedy decoding under the twin's plugin.

    .venv/bin/python benchmarks/kernel_speedup.py [--platforms mps2-an386,...] [--bits 2,3,4,8]
                                                 [--asymmetric] [--tokens 8] [--json]

Prints, per platform and weight width, instructions per decoded token and the quantized matvecs'
instructions per decoded token (matvec_q2/q3/q4/q8 together), ref and the optimized set side by side,
with the ratio ref / optimized, the simd-class share of a token, and whether both builds produced the host
reference's tokens. Counts are exact (QEMU + plugin), so one run each is enough; time on a board is
the calibration's business (docs/calibration.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.device.build import build_firmware  # noqa: E402
from twin.device.protocol import PhaseKind  # noqa: E402
from twin.model import modelgen  # noqa: E402
from twin.model.image import read_image  # noqa: E402
from twin.model.reference import QuantReference  # noqa: E402
from twin.platforms import all_platforms  # noqa: E402
from twin.profile.counts import sum_profiles  # noqa: E402
from twin.runner import RunSpec, model_image, model_tokenizer, profiled_session  # noqa: E402


def decode_counts(platform, spec: RunSpec) -> dict:
    """One greedy generation of ``spec`` on ``platform`` as given (its kernel set included)."""
    fw = build_firmware(platform)
    image_path, image, _ = model_image(spec)
    tokenizer = model_tokenizer(spec.model)       # the prompt as `twin run` encodes it
    prompt = tokenizer.encode(spec.prompt) if tokenizer else modelgen.encode(spec.prompt)
    expected = QuantReference(read_image(image)).generate(prompt, spec.tokens)
    with profiled_session(platform, fw.elf, image_path) as s:
        if s.info.status != 0:
            raise SystemExit(f"{platform.id}: the firmware refused the model image (status {s.info.status})")
        phases, _ = s.device.run(prompt, spec.tokens)
    kinds = [ph.kind for ph in (*s.boot_phases, *phases)]
    decode = [s.segments[2 * i + 1] for i, k in enumerate(kinds) if k == PhaseKind.DECODE]
    total = sum_profiles(decode)
    tokens = [ph.token for ph in phases if ph.kind == PhaseKind.DECODE]
    n = len(decode)
    return {
        "build_id": fw.build_id,
        "instructions_per_token": total.total / n,
        "matvec_per_token": sum(v for f, v in total.by_function.items() if f.startswith("matvec_q")) / n,
        "simd_per_token": total.by_class["simd"] / n,
        "matches_reference": tokens == expected,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    optimized = [p.id for p in all_platforms().values() if p.kernels != "ref" and p.emulator]
    ap.add_argument("--platforms", default=",".join(optimized), help="comma-separated (default: every emulated "
                    "platform whose kernels: is an optimized set: arm_dsp, mve)")
    ap.add_argument("--bits", default="2,3,4,8", help="weight widths of the built-in model (default 2,3,4,8)")
    ap.add_argument("--asymmetric", action="store_true", help="asymmetric (zero-point) quantization")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    args = ap.parse_args(argv)

    platforms = all_platforms()
    rows = []
    for pid in args.platforms.split(","):
        base = platforms[pid]
        for bits in (int(b) for b in args.bits.split(",")):
            spec = RunSpec(platform=pid, bits=bits, symmetric=not args.asymmetric, tokens=args.tokens)
            kernels = base.kernels if base.kernels != "ref" else "arm_dsp"
            ref = decode_counts(dataclasses.replace(base, kernels="ref"), spec)
            dsp = decode_counts(dataclasses.replace(base, kernels=kernels), spec)
            rows.append({"platform": pid, "bits": bits, "scheme": "asym" if args.asymmetric else "sym",
                         "kernels": kernels, "ref": ref, kernels: dsp, "optimized": dsp,
                         "token_ratio": ref["instructions_per_token"] / dsp["instructions_per_token"],
                         "matvec_ratio": ref["matvec_per_token"] / dsp["matvec_per_token"]})
            if not args.json:
                print(f"{pid:15s} {kernels:7s} q{bits} {rows[-1]['scheme']:4s}  instr/token {ref['instructions_per_token']:>11,.0f}"
                      f" -> {dsp['instructions_per_token']:>11,.0f}  ({rows[-1]['token_ratio']:.2f}x)   "
                      f"matvec/token {ref['matvec_per_token']:>11,.0f} -> {dsp['matvec_per_token']:>11,.0f}  "
                      f"({rows[-1]['matvec_ratio']:.2f}x)   simd {dsp['simd_per_token'] / dsp['instructions_per_token']:.0%}"
                      f"   tokens match: ref {ref['matches_reference']}, {kernels} {dsp['matches_reference']}",
                      flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    if not all(r["ref"]["matches_reference"] and r["optimized"]["matches_reference"] for r in rows):
        raise SystemExit("a build's tokens differ from the host reference")


if __name__ == "__main__":
    main()
