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

With --softfloat, the soft-float builds (RV32IM without F, ARMv6-M: firmware/softfloat/README.md) instead,
each built twice, with libgcc's float helpers and with firmware/softfloat/softfloat.c (the kernels as the
platform has them), side by side: instructions per decoded token and those of the float helpers
(__*sf*, __clzsi2, Arm's __aeabi_f*/i2f/ui2f/cfcmp*, softfloat.c's out-of-line slow paths); with --rtl
also, on the RTL boards among the platforms, the cycles per decoded token that the cycle-exact
simulation of the core counts (mcycle; minutes per build).

    .venv/bin/python benchmarks/kernel_speedup.py --softfloat [--platforms riscv32-virt,rtl-ibex,rpi-pico]
                                                 [--bits 4] [--rtl] [--tokens 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.device.build import build_firmware, soft_float_build  # noqa: E402
from twin.device.protocol import PhaseKind  # noqa: E402
from twin.model import modelgen  # noqa: E402
from twin.model.image import read_image  # noqa: E402
from twin.model.reference import QuantReference  # noqa: E402
from twin.platforms import all_platforms  # noqa: E402
from twin.profile.counts import sum_profiles  # noqa: E402
from twin.runner import RunSpec, model_image, model_tokenizer, profiled_session, rtl_session  # noqa: E402

SOFTFLOAT_LOCALS = ("add_slow", "mul_slow", "div_slow", "div_core", "pack_slow")   # softfloat.c, out of line


def float_helper(name: str) -> bool:
    """A compiler-runtime float helper (libgcc's or firmware/softfloat's): __mulsf3, __floatsisf, __ltsf2, ...;
    on Arm __aeabi_fmul, __aeabi_i2f, __aeabi_fcmpgt, __aeabi_f2iz, ... (not __aeabi_lmul: integer); and
    the static functions of softfloat.c that its helpers call (slow paths, the divide's core)."""
    if name.startswith("__aeabi_"):
        return name[8:].startswith(("f", "cf", "i2f", "ui2f"))
    return name in SOFTFLOAT_LOCALS or (name.startswith("__") and ("sf" in name or name == "__clzsi2"))


def decode_counts(platform, spec: RunSpec, softfloat: bool = True) -> dict:
    """One greedy generation of ``spec`` on ``platform`` as given (its kernel set included);
    ``softfloat=False``: a soft-float build with libgcc's float helpers (build_firmware)."""
    fw = build_firmware(platform, softfloat=softfloat)
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
        "float_helpers_per_token": sum(v for f, v in total.by_function.items() if float_helper(f)) / n,
        "matches_reference": tokens == expected,
    }


def rtl_cycles(platform, spec: RunSpec, softfloat: bool = True) -> dict:
    """The same generation on the platform's RTL board: mcycle per decoded token (mean), the tokens."""
    fw = build_firmware(platform, softfloat=softfloat)
    image_path, image, _ = model_image(spec)
    tokenizer = model_tokenizer(spec.model)
    prompt = tokenizer.encode(spec.prompt) if tokenizer else modelgen.encode(spec.prompt)
    expected = QuantReference(read_image(image)).generate(prompt, spec.tokens)
    with rtl_session(platform, fw.elf, image_path, timeout=3600.0, reply_timeout=1200.0) as b:
        phases, _ = b.device.run(prompt, spec.tokens)
    decode = [ph for ph in phases if ph.kind == PhaseKind.DECODE]
    return {"build_id": fw.build_id, "cycles_per_token": sum(ph.cycles for ph in decode) / len(decode),
            "decode_cycles": [ph.cycles for ph in decode],
            "matches_reference": [ph.token for ph in decode] == expected}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    optimized = [p.id for p in all_platforms().values() if p.kernels != "ref" and p.emulator]
    ap.add_argument("--platforms", default=None, help="comma-separated (default: every emulated platform whose "
                    "kernels: is an optimized set: arm_dsp, mve; with --softfloat: riscv32-virt,rtl-ibex,"
                    "rpi-pico)")
    ap.add_argument("--bits", default="2,3,4,8", help="weight widths of the built-in model (default 2,3,4,8)")
    ap.add_argument("--asymmetric", action="store_true", help="asymmetric (zero-point) quantization")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    ap.add_argument("--softfloat", action="store_true", help="libgcc's float helpers against firmware/softfloat "
                    "on soft-float builds (RV32IM, ARMv6-M), instead of the kernel sets")
    ap.add_argument("--rtl", action="store_true", help="with --softfloat: also cycles per decoded token on the "
                    "RTL boards among the platforms (cycle-exact simulation, minutes)")
    args = ap.parse_args(argv)

    platforms = all_platforms()
    if args.softfloat:
        return softfloat_rows(platforms, args)
    rows = []
    for pid in (args.platforms or ",".join(optimized)).split(","):
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


def softfloat_rows(platforms: dict, args: argparse.Namespace) -> None:
    rows = []
    for pid in (args.platforms or "riscv32-virt,rtl-ibex,rpi-pico").split(","):
        base = platforms[pid]
        if not soft_float_build(base):
            raise SystemExit(f"{pid}: not a soft-float RV32IM or ARMv6-M build (its -march/-mabi, -mcpu/-march, "
                             "-mfloat-abi); see firmware/softfloat/README.md")
        for bits in (int(b) for b in args.bits.split(",")):
            spec = RunSpec(platform=pid, bits=bits, symmetric=not args.asymmetric, tokens=args.tokens)
            libgcc = decode_counts(base, spec, softfloat=False)
            ours = decode_counts(base, spec, softfloat=True)
            rows.append({"platform": pid, "bits": bits, "scheme": "asym" if args.asymmetric else "sym",
                         "libgcc": libgcc, "softfloat": ours,
                         "token_ratio": libgcc["instructions_per_token"] / ours["instructions_per_token"],
                         "float_ratio": libgcc["float_helpers_per_token"] / ours["float_helpers_per_token"]})
            if args.rtl and base.rtl is not None:
                rows[-1]["rtl"] = {"libgcc": rtl_cycles(base, spec, False), "softfloat": rtl_cycles(base, spec, True)}
            if not args.json:
                print(f"{pid:15s} q{bits} {rows[-1]['scheme']:4s}  instr/token {libgcc['instructions_per_token']:>11,.0f}"
                      f" -> {ours['instructions_per_token']:>11,.0f}  ({rows[-1]['token_ratio']:.2f}x)   "
                      f"float helpers/token {libgcc['float_helpers_per_token']:>11,.0f} -> "
                      f"{ours['float_helpers_per_token']:>11,.0f}  ({rows[-1]['float_ratio']:.2f}x)   "
                      f"tokens match: libgcc {libgcc['matches_reference']}, softfloat {ours['matches_reference']}",
                      flush=True)
                if "rtl" in rows[-1]:
                    a, b = rows[-1]["rtl"]["libgcc"], rows[-1]["rtl"]["softfloat"]
                    print(f"{'':15s} rtl {base.rtl.core:9s} cycles/token {a['cycles_per_token']:>11,.0f} -> "
                          f"{b['cycles_per_token']:>11,.0f}  ({a['cycles_per_token'] / b['cycles_per_token']:.2f}x)   "
                          f"tokens match: libgcc {a['matches_reference']}, softfloat {b['matches_reference']}",
                          flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    builds = [x for r in rows for x in (r["libgcc"], r["softfloat"], *r.get("rtl", {}).values())]
    if not all(x["matches_reference"] for x in builds):
        raise SystemExit("a build's tokens differ from the host reference")


if __name__ == "__main__":
    main()
