"""The bench workflow: run the calibration suite (and a model) on a device, join the board's cycle
counts with the twin's instruction counts, and write the bench dataset the calibration fits.

    rows = bench(BenchSpec(platform="stm32f4-disco", port="/dev/ttyACM0"))   # a real board
    rows = bench(BenchSpec(platform="mps2-an386", port="qemu"))              # the emulator
    rows = bench(BenchSpec(platform="rtl-ibex", port="rtl"))                 # an RTL-simulated board
    write_dataset(rows, "bench.csv")

A real board gives cycles (its DWT / mcycle counter, per phase); the twin — the SAME ELF in the
emulator with the profiling plugin — gives the instruction counts by class of the same requests; rows
are joined by workload × phase (and checked by the workloads' checksums). With ``port="qemu"`` the
emulator is the device: counts and cycles come from one session, and the cycles read 0 (the dataset
says ``cycle_counter`` none). Schema (one row per workload × phase): see :data:`COLUMNS` and
docs/calibration.md.
"""

from __future__ import annotations

import csv
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from twin.bench.workloads import SuiteItem, default_suite
from twin.device.build import Firmware, build_firmware
from twin.device.protocol import Info, Phase, PhaseKind
from twin.device.rtl import RtlProcess
from twin.device.transport import Device, DeviceGone, DeviceTimeout
from twin.model.image import read_image
from twin.platforms import Platform, get_platform
from twin.profile import fetch_path, isa
from twin.profile.counts import DATA_CACHE_KINDS, SegmentProfile, own_cache
from twin.runner import RunSpec, model_image, profiled_session

QEMU_PORTS = ("qemu", "emulate", "emulator")
RTL_PORT = "rtl"        # the platform's RTL board (twin/device/rtl.py), started for the bench
ID_COLUMNS = ("board", "platform", "workload", "phase", "clock_hz", "build_id")
FEATURE_COLUMNS = tuple(f"n_{c}" for c in isa.CLASSES)
MEMORY_COLUMNS = ("loads_flash", "loads_sram", "stores_sram")
COLUMNS = (*ID_COLUMNS, *FEATURE_COLUMNS, *MEMORY_COLUMNS, "branches_taken", "branches_unresolved", "fetch_bytes",
           "icache_misses", "icache_prefetched", "dcache_misses", "wait_cycles", "instructions", "cycles",
           "cycle_counter", "energy_j", "size", "iterations", "checksum", "compiler", "cflags", "bench_date")


class BenchError(RuntimeError):
    """The bench run could not be completed or joined; the message says what was wrong and what to do."""


class BenchInterrupted(BenchError):
    """The device stopped answering part-way: ``measurements`` holds what it measured before."""

    def __init__(self, message: str, measurements: list[Measurement], info: Info | None = None):
        super().__init__(message)
        self.measurements = measurements
        self.info = info


@dataclass
class BenchSpec:
    platform: str
    port: str = "qemu"                   # pyserial URL (/dev/ttyACM0, socket://…) or "qemu"
    model: str | None = "builtin"        # "builtin", an image path, or None: the suite only
    bits: int = 4
    tokens: int = 8
    prompt_tokens: int = 4
    suite: list[SuiteItem] | None = None  # default: twin.bench.workloads.default_suite(scale)
    scale: float = 1.0
    board: str | None = None             # the dataset's board id (default: the platform id)
    baudrate: int = 115200
    mem_traffic: bool = True             # loads/stores per memory region from the twin (slower)
    trace: Path | None = None
    trace_format: str = "generic"
    trace_channel: str | None = None
    trace_windows: Path | None = None
    voltage: float | None = None
    timeout: float = 600.0
    reply_timeout: float = 60.0


@dataclass
class Measurement:
    """One bracketed phase as the device reported it."""
    workload: str
    phase: str
    cycles: int
    checksum: int | None = None
    size: int | None = None
    iterations: int | None = None
    token: int | None = None


@dataclass
class BenchResult:
    rows: list[dict]
    info: Info
    cycle_counter: str
    wall_seconds: float
    notes: list[str] = field(default_factory=list)
    interrupted: str | None = None       # why the board stopped part-way (rows: what it measured before)
    remaining: list[str] = field(default_factory=list)   # suite workloads it did not measure


def is_emulated_port(port: str) -> bool:
    return port.lower() in QEMU_PORTS


# --------------------------------------------------------------------------- talking to the device


def _prompt(image: bytes | None, n: int, tokens: int) -> list[int]:
    """A fixed prompt of token ids (the bench measures compute, not text): 1, then a spread."""
    cfg = read_image(image).config
    n = max(1, min(n, cfg.seq_len - tokens))
    if n + tokens > cfg.seq_len:
        raise BenchError(f"{tokens} tokens do not fit the model's context of {cfg.seq_len}: ask for fewer")
    return [1 % cfg.vocab_size] + [(7 * i + 3) % cfg.vocab_size for i in range(1, n)]


def run_plan(device: Device, suite: list[SuiteItem], model: tuple[str, list[int], int] | None,
             on_step: Callable[[str], None] | None = None) -> list[Measurement]:
    """Run the suite, then (``model`` = (name, prompt ids, tokens)) one greedy generation; one
    Measurement per bracketed phase, in the order the firmware ran them."""
    out: list[Measurement] = []
    step = ""
    try:
        for item in suite:
            step = item.label
            if on_step:
                on_step(step)
            _, done = device.workload(item.workload.id, item.size, item.iterations)
            out.append(Measurement(item.label, "run", done.cycles, done.checksum, item.size, item.iterations))
        if model is not None:
            name, prompt, tokens = model
            step = f"model:{name}"
            if on_step:
                on_step(step)
            phases, _ = device.run(prompt, tokens, seed=0, temperature=0.0, topp=1.0)
            for ph in phases:
                phase = "prefill" if ph.kind == PhaseKind.PREFILL else f"decode:{ph.index}"
                out.append(Measurement(f"model:{name}", phase, ph.cycles, None, None, None, ph.token))
    except (DeviceGone, DeviceTimeout) as exc:
        raise BenchInterrupted(f"the device stopped answering during {step} ({exc})", out) from None
    return out


def _validation(name: str, phases: list[Phase], info: Info) -> Measurement:
    cycles = next((p.cycles for p in phases if p.kind == PhaseKind.VALIDATE), info.validate_cycles)
    return Measurement(f"model:{name}", "validate", cycles)


@dataclass
class _TwinRun:
    measurements: list[Measurement]           # validation first, then the plan
    profiles: list[SegmentProfile]            # one per measurement
    info: Info
    wait_cycles: list[float | None]           # per measurement: the wait states' cycles, simulated (_wait_cycles)


def _wait_cycles(platform: Platform, dump, elf: Path, segments: list[int], clock_hz: int | None) -> list[float | None]:
    """Per segment, the cycles the board's flash wait states add to its fetches and flash loads as the twin
    simulates the core's fetch path (twin.profile.fetch_path), where a model applies and the run counted
    the loads per instruction (memory traffic); None elsewhere (the calibration then takes the additive
    fetch and flash-load terms)."""
    ws = fetch_path.board_wait_states(platform, clock_hz)
    if ws is None or dump is None or dump.edges is None or dump.mem_sites is None:
        return [None] * len(segments)
    return [fetch_path.wait_cycles(dump, elf, [k], ws, core=platform.core)["cycles"] for k in segments]


def _twin(platform: Platform, fw: Firmware, image_path: Path | None, suite: list[SuiteItem],
          model: tuple[str, list[int], int] | None, spec: BenchSpec,
          on_step: Callable[[str], None] | None, model_name: str | None = None) -> _TwinRun:
    """Run the plan in the emulator with the profiling plugin: per-phase counts (and the emulator's
    own replies: cycles 0)."""
    name = model_name if model_name is not None else (model[0] if model else "")
    with profiled_session(platform, fw.elf, image_path, mem_traffic=spec.mem_traffic, timeout=spec.timeout,
                          reply_timeout=spec.reply_timeout) as s:
        try:
            plan = run_plan(s.device, suite, model, on_step)
        except BenchInterrupted as exc:       # as from a board: what it answered, validation first
            try:                              # a lost link is usually a dead emulator: say how it ended
                status = s.backend.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                status = None
            said = s.backend.stderr()
            why = "" if status is None else (f"; {s.backend.name} exited with status {status}" if status >= 0 else
                                             f"; {s.backend.name} was killed by {_signal_name(-status)}")
            why += f"; it said: {said}" if said else ""
            raise BenchInterrupted(f"{exc}{why}", [_validation(name, s.boot_phases, s.info),
                                                   *exc.measurements], info=s.info) from None
    boot, info, segments = s.boot_phases, s.info, s.segments
    expected = 2 * (1 + len(plan)) + 1       # boot | validate | io | phase | io | ... | io
    if len(segments) != expected:
        raise BenchError(f"the twin's profile has {len(segments)} segments, {expected} expected for "
                         f"{len(plan)} phases: the phase markers and the protocol disagree")
    cut = [1 + 2 * k for k in range(len(plan) + 1)]
    return _TwinRun([_validation(name, boot, info), *plan], [segments[k] for k in cut], info,
                    _wait_cycles(platform, s.dump, fw.elf, cut, info.clock_hz))


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _features(p: SegmentProfile | None, cache_key: str | None = None, dcache_key: str | None = None,
              wait_cycles: float | None = None) -> dict:
    if p is None:
        return {**dict.fromkeys(FEATURE_COLUMNS, ""), **dict.fromkeys(MEMORY_COLUMNS, ""), "instructions": "",
                "branches_taken": "", "branches_unresolved": "", "fetch_bytes": "", "icache_misses": "",
                "icache_prefetched": "", "dcache_misses": "", "wait_cycles": ""}
    out = {f"n_{c}": p.by_class.get(c, 0) for c in isa.CLASSES}
    # the wait states' cycles where the twin simulated the core's fetch path (fetch and flash-load waits)
    out["wait_cycles"] = "" if wait_cycles is None else round(wait_cycles, 1)
    out["instructions"] = p.total
    out["fetch_bytes"] = p.fetch_bytes
    # the board's own instruction cache as the twin simulated it (twin.profile.counts.catalog_caches)
    sim = p.icache.get(cache_key) if cache_key else None
    out["icache_misses"] = sim["misses"] if sim else ""
    out["icache_prefetched"] = sim["prefetched"] if sim else ""
    dsim = p.dcache.get(dcache_key) if dcache_key else None     # and its data cache (memory-traffic runs)
    out["dcache_misses"] = dsim["misses"] if dsim else ""
    # Taken branches derived from the TB counts (twin/profile/counts.py), and the conditional branches
    # whose split could not be derived (the calibration charges those at its taken fraction).
    out["branches_taken"] = p.branches_taken
    out["branches_unresolved"] = p.branches_unresolved
    if p.mem is not None:
        out["loads_flash"] = p.mem["code"]["loads"] + p.mem["model"]["loads"]
        out["loads_sram"] = p.mem["ram"]["loads"]
        out["stores_sram"] = p.mem["ram"]["stores"]
    else:
        out.update(dict.fromkeys(MEMORY_COLUMNS, ""))
    return out


# --------------------------------------------------------------------------- the workflow


def bench(spec: BenchSpec, on_step: Callable[[str], None] | None = None) -> BenchResult:
    """Run the bench (see the module doc) and return the dataset rows."""
    started = time.perf_counter()
    platform = get_platform(spec.platform)
    fw = build_firmware(platform)
    suite = spec.suite if spec.suite is not None else default_suite(spec.scale)
    image_path: Path | None = None
    model = None
    if spec.model:
        image_path, image, name = model_image(RunSpec(platform=platform.id, model=spec.model, bits=spec.bits))
        if len(image) > platform.model.size:
            raise BenchError(f"the model image ({len(image)} bytes) does not fit {platform.id}'s model "
                             f"partition ({platform.model.size} bytes): use --bits 4 or a smaller model")
        model = (name, _prompt(image, spec.prompt_tokens, spec.tokens), spec.tokens)
    notes: list[str] = []
    emulated = is_emulated_port(spec.port)
    if emulated and platform.emulator is None:
        raise BenchError(f"platform {platform.id} has no emulator model: give the board's serial port "
                         "with --port")
    if spec.port.lower() == RTL_PORT and platform.rtl is None:
        raise BenchError(f"platform {platform.id} is not an RTL board: --port rtl takes one of "
                         "the rtl-* platforms (`twin platforms`)")
    twin: _TwinRun | None = None
    interrupted, remaining, validation_name = None, [], None
    # One path for every device (QEMU, an RTL board, a real board): measure the plan; when the device
    # stops part-way keep what it measured, name the rest, and count exactly the finished workloads
    # in a fresh, complete twin run (a killed QEMU leaves no plugin dump: no counts without one).
    try:
        if emulated:                          # the twin is the device: one session gives both
            twin = _twin(platform, fw, image_path, suite, model, spec, on_step)
            device_run, info = twin.measurements, twin.info
        elif spec.port.lower() == RTL_PORT:
            with RtlProcess(platform, fw.elf, image_path, timeout=spec.timeout) as sim:
                device_run, info = _on_board(spec, platform, fw, suite, model, on_step, url=sim.url, fresh=True)
        else:
            device_run, info = _on_board(spec, platform, fw, suite, model, on_step)
    except BenchInterrupted as exc:           # keep what the device measured; the twin counts only that
        interrupted, device_run, info = str(exc), exc.measurements, exc.info
        done = {m.workload for m in device_run}
        remaining = [item.label for item in suite if item.label not in done]
        suite = [item for item in suite if item.label in done]
        if model is not None:                 # the generation is the plan's last step: not measured
            remaining.append(f"model:{model[0]}")
            validation_name, model = model[0], None
    if emulated:
        counter = "none"                      # QEMU's counters read 0: not a cycle count
    else:
        counter = platform.cycle_counter
        if counter != "none" and not any(m.cycles for m in device_run):
            notes.append(f"every cycle count is 0: {platform.id}'s counter ({counter}) did not run — "
                         "the dataset says cycle_counter none")
            counter = "none"
    if platform.emulator is None:
        notes.append(f"{platform.id} has no emulator model: the rows have no instruction counts")
    elif twin is None:                        # a board's run, or an emulated one that died part-way
        try:
            twin = _twin(platform, fw, image_path, suite, model, spec, None, model_name=validation_name)
        except BenchInterrupted as exc:
            again = f"{interrupted}; then " if interrupted else ""
            raise BenchError(f"{again}the twin (QEMU with the profiling plugin) stopped while counting the "
                             f"{len(device_run)} phases measured: {exc}. No rows written: without the twin "
                             "they have no instruction counts") from None
        _check_join(device_run, twin.measurements)
        if emulated:
            notes.append(f"the emulator stopped part-way; the {len(suite)} workloads it finished were "
                         "counted again in a complete twin run (a killed QEMU leaves no profile)")
    energies = _energies(spec, len(device_run) - 1) if spec.trace else None
    bench_date = datetime.now(timezone.utc).date().isoformat()
    own = own_cache(platform.accelerators)       # the board's caches, simulated on the twin's run
    cache_key = own[0].key if own else None
    own_d = own_cache(platform.accelerators, kinds=DATA_CACHE_KINDS)
    dcache_key = own_d[0].key if own_d else None
    rows = []
    for k, m in enumerate(device_run):
        if k == 0 and not m.workload.removeprefix("model:"):
            continue                      # no model: no validation row
        rows.append({
            "board": spec.board or platform.id,
            "platform": platform.id,
            "workload": m.workload,
            "phase": m.phase,
            "clock_hz": info.clock_hz,
            "build_id": info.build_id,
            **_features(twin.profiles[k] if twin else None, cache_key, dcache_key,
                        twin.wait_cycles[k] if twin else None),
            "cycles": m.cycles if counter != "none" else 0,
            "cycle_counter": counter,
            "energy_j": "" if energies is None or energies[k] is None else f"{energies[k]:.9g}",
            "size": "" if m.size is None else m.size,
            "iterations": "" if m.iterations is None else m.iterations,
            "checksum": "" if m.checksum is None else f"{m.checksum:#010x}",
            "compiler": fw.compiler,
            "cflags": fw.cflags,
            "bench_date": bench_date,
        })
    return BenchResult(rows, info, counter, round(time.perf_counter() - started, 3), notes, interrupted, remaining)


def _on_board(spec: BenchSpec, platform: Platform, fw: Firmware, suite: list[SuiteItem],
              model: tuple[str, list[int], int] | None, on_step: Callable[[str], None] | None,
              url: str | None = None, fresh: bool = False) -> tuple[list[Measurement], Info]:
    """Measure on the device at ``url`` (default: the spec's port); ``fresh``: it has just been started,
    so wait for its BOOT announcement before the first request."""
    with Device.from_url(url or spec.port, baudrate=spec.baudrate, timeout=spec.reply_timeout,
                         deadline=spec.timeout) as dev:
        if fresh:
            dev.wait_boot()
        phases, info = dev.hello()
        if info.board != platform.id:
            raise BenchError(f"the device on {spec.port} is a {info.board!r} firmware, not {platform.id}: "
                             "flash the firmware built for this platform (`twin build`)")
        if info.build_id != fw.build_id:
            raise BenchError(f"the device on {spec.port} runs firmware build {info.build_id}, this host's "
                             f"build for {platform.id} is {fw.build_id} ({fw.elf}): flash that ELF, so the "
                             "twin counts the same code the board runs")
        if model is not None and info.status != 0:
            raise BenchError(f"the device on {spec.port} has no valid model image (status {info.status}): "
                             "flash the model image, or bench without a model (--model none)")
        validation = _validation(model[0] if model else "", phases, info)
        try:
            plan = run_plan(dev, suite, model, on_step)
        except BenchInterrupted as exc:
            exc.measurements, exc.info = [validation, *exc.measurements], info
            raise
    return [validation, *plan], info


def _check_join(board: list[Measurement], twin: list[Measurement]) -> None:
    if [(m.workload, m.phase) for m in board] != [(m.workload, m.phase) for m in twin]:
        raise BenchError("the board and the twin ran different phases — the join by workload × phase fails")
    for b, t in zip(board, twin, strict=True):
        if b.checksum != t.checksum or b.token != t.token:
            raise BenchError(f"{b.workload} {b.phase}: the board's result ({b.checksum}, token {b.token}) "
                             f"differs from the twin's ({t.checksum}, token {t.token}) — the board does not run "
                             "the same firmware and model image, or it computes differently")


def _energies(spec: BenchSpec, n_phases: int) -> list[float | None]:
    """Energy per measurement (validation first): None where the trace has no window for it."""
    from twin.bench.traces import phase_energies, read_trace, read_windows

    assert spec.trace is not None
    trace = read_trace(spec.trace, spec.trace_format)
    windows = read_windows(spec.trace_windows) if spec.trace_windows else None
    e = phase_energies(trace, n_phases, channel=spec.trace_channel, windows=windows, voltage=spec.voltage)
    return e if len(e) == n_phases + 1 else [None, *e]


# --------------------------------------------------------------------------- dataset files


def write_dataset(rows: list[dict], path: Path | str) -> None:
    """Write the rows as CSV with the columns of :data:`COLUMNS` (in that order)."""
    from twin.atomic import open_atomic

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

