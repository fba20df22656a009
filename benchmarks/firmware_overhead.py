"""Profiler overhead on the real firmware: the same ELF, model image and RUN request under bare QEMU
and under the twin's profiling plugin — counters only (what `twin run` uses), with memory traffic
(`--mem-traffic`), with exact edge counts — side by side, measured in one run.

    .venv/bin/python benchmarks/firmware_overhead.py [--platform mps2-an386] [--tokens 48] [--repeat 5]

Prints the median wall time of the RUN request (guest execution + protocol) and of the whole emulator
session (start to exit), guest MIPS (instructions counted by the plugin / RUN wall time) and the ratio
to bare QEMU. The model is a ~2.7 M-parameter random Llama (dim 192, 6 layers) so that one run executes
about 1.5 G instructions on Arm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.device.build import build_firmware  # noqa: E402
from twin.model import modelgen  # noqa: E402
from twin.model.image import write_image  # noqa: E402
from twin.platforms import get_platform  # noqa: E402
from twin.profile.counts import analyze, parse_dump, plugin_args  # noqa: E402
from twin.runner import emulator_session, memory_regions  # noqa: E402

BENCH_MODEL = modelgen.ModelConfig(dim=192, hidden_dim=512, n_layers=6, n_heads=6, n_kv_heads=3,
                                   vocab_size=512, seq_len=128, name="bench-2.7m")


def one_run(platform, elf: Path, image: Path, prompt: list[int], tokens: int, extra: tuple[str, ...]):
    start = time.perf_counter()
    with emulator_session(platform, elf, image, extra_args=extra, timeout=600) as s:
        t0 = time.perf_counter()
        s.device.run(prompt, tokens)
        run_wall = time.perf_counter() - t0
    return run_wall, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--platform", default="mps2-an386")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--bits", type=int, default=4, choices=[4, 8])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    platform = get_platform(args.platform)
    fw = build_firmware(platform)
    work = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    image = work / "bench.twlm"
    image.write_bytes(write_image(modelgen.generate_model(BENCH_MODEL), bits=args.bits))
    prompt = modelgen.encode("Once upon a time there was")
    dump = work / "profile.dump"
    configs = {
        "bare QEMU": (),
        "profiling plugin": tuple(plugin_args(fw.elf, dump)),
        "+ memory traffic": tuple(plugin_args(fw.elf, work / "mem.dump", memory_regions(platform))),
        "+ exact edges": tuple(plugin_args(fw.elf, work / "edges.dump", edges=True)),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for _ in range(args.repeat):                      # interleaved, so drift hits both alike
        for name, extra in configs.items():
            results[name].append(one_run(platform, fw.elf, image, prompt, args.tokens, extra))
    segments = analyze(parse_dump(dump), fw.elf, platform.arch)
    guest = sum(s.total for s in segments[3::2])      # prefill + decode phases of the RUN
    print(f"{platform.id}: {BENCH_MODEL.name}, {args.bits}-bit, {len(prompt)} prompt + {args.tokens} tokens, "
          f"{guest:,} guest instructions in the RUN; median of {args.repeat}")
    print(f"{'configuration':<18}{'RUN wall s':>11}{'min-max':>14}{'guest MIPS':>12}{'ratio':>8}{'session s':>11}"
          f"{'ratio':>8}")
    base_run = statistics.median(r for r, _ in results["bare QEMU"])
    base_all = statistics.median(a for _, a in results["bare QEMU"])
    for name, rows in results.items():
        run_wall = statistics.median(r for r, _ in rows)
        all_wall = statistics.median(a for _, a in rows)
        spread = f"{min(r for r, _ in rows):.3f}-{max(r for r, _ in rows):.3f}"
        print(f"{name:<18}{run_wall:>11.3f}{spread:>14}{guest / run_wall / 1e6:>12.0f}{run_wall / base_run:>8.2f}"
              f"{all_wall:>11.3f}{all_wall / base_all:>8.2f}")


if __name__ == "__main__":
    main()
