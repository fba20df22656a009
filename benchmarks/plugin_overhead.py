"""Wall time of one firmware run under bare QEMU and under the twin plugin.

Usage:
    .venv/bin/python benchmarks/plugin_overhead.py                    # Arm fixture, ~1e9 insns
    .venv/bin/python benchmarks/plugin_overhead.py --target riscv --iterations 100000000
    .venv/bin/python benchmarks/plugin_overhead.py --elf fw.elf -- qemu-system-arm -M ... -kernel fw.elf

Configurations: "bare" (no plugin), "counters" (inline TB counters + marks, the default mode),
"mem" (counters + per-access memory callbacks over the given regions), "edges" (counters + a
per-TB callback counting TB-to-TB edges: exact taken-branch counts), "icache" (counters + a per-TB
callback simulating the catalog's instruction-cache geometries, as every model run does).  Prints the median wall
time of --repeat runs, guest MIPS (instructions counted by the plugin / wall time) and the ratio
to bare.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures import programs  # noqa: E402

from twin.profile.counts import analyze, build_plugin, parse_dump, plugin_args, sum_profiles  # noqa: E402


def timed_run(cmd: list[str], timeout: float) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"QEMU failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=sorted(programs.TARGETS), default="arm")
    ap.add_argument("--iterations", type=int, default=90_000_000,
                    help="work_loop iterations of the fixture (11 insns each on Arm, 8 on RISC-V)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--elf", type=Path, help="benchmark this ELF; give the QEMU command after --")
    ap.add_argument("--arch", default=None, help="arch of --elf (arm or riscv; default from the ELF)")
    ap.add_argument("--region", action="append", default=[],
                    help="NAME:0xSTART:0xEND for the mem configuration (default: the fixture's RAM)")
    ap.add_argument("qemu", nargs=argparse.REMAINDER, help="-- QEMU command line (with --elf)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    plugin = build_plugin(work)
    if args.elf:
        qemu = [a for a in args.qemu if a != "--"]
        if not qemu:
            ap.error("--elf needs the QEMU command after --")
        elf = args.elf
        arch = args.arch or _elf_arch(elf)
        regions = {}
        code = (0, 2**32)
        what = f"{elf}"
    else:
        t = programs.TARGETS[args.target]
        elf = programs.build(t, work)
        arch = t.arch
        qemu = programs.qemu_command(t, elf, args.iterations)
        regions = {"ram": t.ram}
        code = t.code
        what = f"{t.arch} fixture, {args.iterations} iterations"
    for spec in args.region:
        name, start, end = spec.split(":")
        regions[name] = (int(start, 0), int(end, 0))

    dump = work / "dump.txt"

    def _caches(window):
        from twin.platforms import all_platforms
        from twin.profile.counts import MAX_CACHES, cache_geometry

        geoms = {g.key: g for p in all_platforms().values() for a in p.accelerators
                 if (g := cache_geometry(a, *window)) is not None}
        return list(geoms.values())[:MAX_CACHES]
    configs = {
        "bare": qemu,
        "counters": qemu + plugin_args(elf, dump, plugin=plugin),
        "mem": qemu + plugin_args(elf, dump, regions or None, plugin=plugin),
        "edges": qemu + plugin_args(elf, dump, plugin=plugin, edges=True),
        # what a model run adds by default: the catalog's cache geometries over the code
        "icache": qemu + plugin_args(elf, dump, plugin=plugin, icaches=_caches(code)),
    }
    if not regions:
        del configs["mem"]

    # One counted run gives the instruction count.
    timed_run(configs["counters"], args.timeout)
    insns = sum_profiles(analyze(parse_dump(dump), elf, arch)).total

    print(f"{what}: {insns:,} guest instructions, median of {args.repeat}")
    print(f"{'configuration':<14}{'wall s':>10}{'guest MIPS':>12}{'vs bare':>10}")
    bare = None
    for name, cmd in configs.items():
        wall = statistics.median(timed_run(cmd, args.timeout) for _ in range(args.repeat))
        bare = bare or wall
        print(f"{name:<14}{wall:>10.3f}{insns / wall / 1e6:>12.0f}{wall / bare:>10.2f}")


def _elf_arch(elf: Path) -> str:
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        machine = ELFFile(f).header["e_machine"]
    return {"EM_ARM": "arm", "EM_RISCV": "riscv"}[machine]


if __name__ == "__main__":
    main()
