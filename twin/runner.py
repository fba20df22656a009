"""One profiling run end to end: build what is missing, start the emulator, talk to the firmware
through pyserial, cut the counts at the firmware's phase markers, check the generated tokens against
the host reference, and return one report.

The emulator that counts is ``RunSpec.emulator``: QEMU under the profiling plugin (the default), or
Renode (twin/device/renode.py) with its opcode counters. Both go through :func:`backend_session`; only
:func:`profiled_session` knows which one counts and how. What a backend cannot count is no invented
figure: the report's ``unavailable`` maps each such report field to why (empty for QEMU; for Renode
``functions``, ``memory_traffic`` and ``instructions.branches.not_taken``, whose values are ``[]``,
``None`` and ``None``)."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twin import atomic
from twin.device import renode
from twin.device.build import build_firmware, cache_dir
from twin.device.protocol import DeviceError, Info, Phase, PhaseKind
from twin.device.qemu import EmulatorError, QemuConfig, QemuProcess
from twin.device.rtl import RTL_SLOWDOWN, RtlProcess
from twin.device.transport import Device, DeviceGone, DeviceTimeout
from twin.model import modelgen
from twin.model.image import QuantRecipe, read_image, write_image
from twin.model.reference import QuantReference
from twin.platforms import Platform, get_platform, with_kernels
from twin.profile import fetch_path
from twin.profile.counts import (
    DATA_CACHE_KINDS,
    CacheGeometry,
    Dump,
    SegmentProfile,
    analyze,
    catalog_caches,
    function_table,
    parse_dump,
    plugin_args,
    sum_profiles,
)

DEFAULT_PROMPT = "Once upon a time"
EMULATORS = ("qemu", "renode")     # RunSpec.emulator: what runs the firmware and counts its instructions
# A SegmentProfile field a backend cannot count -> the report field that says so in "unavailable"
REPORT_FIELDS = {"by_function": "functions", "mem": "memory_traffic", "by_class": "instructions.by_class",
                 "branches_not_taken": "instructions.branches.not_taken", "caches": "instructions.by_phase_icache"}


class RunError(RuntimeError):
    """A run could not be completed; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class RunSpec:
    platform: str
    model: str = "builtin"           # "builtin" or the path of a model image (.twlm)
    bits: int = 4                    # 2, 3, 4 or 8 (the built-in model's quantization)
    group_size: int = 32
    symmetric: bool = True           # False: asymmetric, per-group zero points
    overrides: tuple[tuple[str, int], ...] = ()  # per-tensor bits, e.g. (("tok_emb", 8),) (QuantRecipe)
    kv_cache: str = "f32"            # the built-in model's KV cache in the firmware: "f32" or "int8"
    prompt: str = DEFAULT_PROMPT
    tokens: int = 16
    seed: int = 0
    temperature: float = 0.0
    topp: float = 0.9
    timeout: float = 120.0           # wall-clock limit for the whole emulator run
    reply_timeout: float = 30.0      # no byte from the firmware for this long = hung
    mem_traffic: bool = False        # count loads/stores per memory region (costs emulator speed)
    kernels: str | None = None       # kernel set of the build (firmware/kernels); None: the platform's
    board: bool = True               # an RTL platform: also run the requests on its RTL board (slow)
    emulator: str = "qemu"           # the counting backend, one of EMULATORS (an RTL board runs beside either)


def model_image(spec: RunSpec) -> tuple[Path, bytes, str]:
    """The model image to load (a file in the cache), its bytes, and the model's display name."""
    if spec.model == "builtin":
        try:
            recipe = QuantRecipe.make(spec.bits, spec.group_size, spec.symmetric, dict(spec.overrides))
            data = write_image(modelgen.builtin_model(), recipe=recipe, kv_cache=spec.kv_cache)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        name = f"builtin-{recipe.label}" + ("-kv8" if spec.kv_cache == "int8" else "")
    else:
        path = Path(spec.model)
        if not path.is_file():
            raise RunError(f"model file {path} not found: give a model image made by twin, or 'builtin'")
        data = path.read_bytes()
        kv = read_image(data).kv_cache   # raises ImageError with what is wrong before anything starts
        if spec.kv_cache != "f32" and kv != spec.kv_cache:
            raise RunError(f"{path} has a {kv} KV cache, not {spec.kv_cache}: the cache type is part of the "
                           f"image (`twin image --kv-cache {spec.kv_cache}`)")
        name = path.name
    digest = hashlib.sha256(data).hexdigest()[:16]
    out = cache_dir() / "images" / f"{digest}.twlm"
    if not _cached_intact(out, digest):   # missing, torn or corrupted: the name is its content's hash
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(out, data)
    return out, data, name


def image_bits(model) -> int:
    """The bit width an image holds most of its quantized weights in (by element count; a tie goes to
    the wider): what a report's "bits" says for a given image, whatever RunSpec.bits was."""
    count: dict[int, int] = {}
    for t in model.tensors.values():
        if t.bits != 32:
            count[t.bits] = count.get(t.bits, 0) + t.rows * t.cols
    return max(count, key=lambda b: (count[b], b)) if count else 32


def _cached_intact(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:len(digest)] == digest
    except OSError:
        return False


# Memory-mapped I/O by architecture: the Cortex-M peripheral region and private peripheral bus (the
# Armv7-M/Armv8-M memory map; a GPIO marker, the UART, the DWT), and on RV32 everything below the
# firmware's DRAM (QEMU virt and the RTL boards: the UART, the test finisher, the reset ROM).
PERIPHERAL_WINDOWS = {"arm": (("peripherals", 0x4000_0000, 0x6000_0000), ("system", 0xE000_0000, 0xE010_0000)),
                      "riscv": (("peripherals", 0x0000_0000, 0x8000_0000),)}


def memory_regions(platform: Platform) -> dict[str, tuple[int, int]]:
    """The regions whose loads and stores the profiler counts: code, model partition, RAM, and the
    architecture's peripheral windows (accesses anywhere else are counted as "?")."""
    regions = {name: (r.origin, r.end) for name, r in
               (("code", platform.flash), ("model", platform.model), ("ram", platform.ram))}
    for name, start, end in PERIPHERAL_WINDOWS.get(platform.arch, ()):
        if all(end <= a or start >= b for a, b in regions.values()):     # never over the memory windows
            regions[name] = (start, end)
    return regions


def model_tokenizer(model: str):
    """The tokenizer for a RunSpec.model: the built-in model's, an image's sidecar ``<image>.tokenizer.json``
    (written by `twin image`), or None (byte-level)."""
    from twin.model.tokenizer import sidecar_tokenizer

    if model == "builtin":
        return modelgen.builtin_model().tokenizer
    return sidecar_tokenizer(Path(model))


def _check_fits(platform: Platform, image: bytes) -> None:
    if len(image) > platform.model.size:
        raise RunError(f"the model image ({len(image)} bytes) is larger than {platform.id}'s model "
                       f"partition ({platform.model.size} bytes): use fewer bits or a smaller model")


Backend = QemuProcess | RtlProcess | renode.RenodeProcess   # one interface (url, remaining, kill, ...)


@dataclass
class Session:
    """A running device backend with its firmware, and the device it exposes (already said HELLO)."""
    backend: Backend
    device: Device
    boot_phases: list[Phase]
    info: Info
    segments: list[SegmentProfile] | None = None    # profiled_session: the counts, once the backend has ended
    dump: Dump | None = None                        # profiled_session under QEMU: the plugin's per-block counts
    unavailable: dict[str, str] | None = None       # profiled_session: SegmentProfile field -> why not counted

    @property
    def qemu(self) -> Backend:     # the name older callers use
        return self.backend


@contextmanager
def backend_session(backend: Backend, reply_timeout: float = 30.0) -> Iterator[Session]:
    """Start ``backend``, open its UART through pyserial and say HELLO. On leaving, the firmware is
    told to EXIT and the backend must end by itself. A firmware that stops answering, or a backend that
    dies, becomes an EmulatorError that says so (with what the backend wrote to stderr)."""
    with backend:
        try:
            with Device.from_url(backend.url, timeout=reply_timeout, deadline=backend.remaining()) as dev:
                dev.wait_boot()
                boot_phases, info = dev.hello()
                yield Session(backend, dev, boot_phases, info)
                dev.exit()
                status = backend.wait_exit()   # before closing the socket: the backend exits at once then
        except (DeviceTimeout, DeviceGone) as exc:
            exited = backend.proc.poll()
            if exited is None and isinstance(exc, DeviceGone):   # the socket closes a moment before the
                try:                                              # process's exit status is there
                    exited = backend.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    exited = None
            backend.kill()
            raise EmulatorError(_emulator_failure(exc, backend, exited)) from None
        if status != 0:
            raise EmulatorError(f"{backend.name} exited with status {status} after the run: {backend.stderr()}")


def emulator_session(platform: Platform, elf: Path, image: Path | None, *, extra_args: tuple[str, ...] = (),
                     timeout: float = 120.0, reply_timeout: float = 30.0):
    """A QEMU session with ``elf`` (and the model ``image`` at the model address): backend_session."""
    cfg = QemuConfig(elf=elf, image=image, timeout=timeout, extra_args=extra_args)
    return backend_session(QemuProcess(platform, cfg), reply_timeout)


def rtl_session(platform: Platform, elf: Path, image: Path | None, *, timeout: float = 600.0,
                reply_timeout: float = 60.0):
    """A session on the platform's RTL board (twin/device/rtl.py): backend_session."""
    return backend_session(RtlProcess(platform, elf, image, timeout=timeout), reply_timeout)


def check_emulator(platform: Platform, emulator: str, mem_traffic: bool = False) -> None:
    """Refuse, before anything is built or started, a run ``emulator`` cannot do on ``platform``."""
    if emulator not in EMULATORS:
        raise RunError(f"unknown emulator {emulator!r}: one of {', '.join(EMULATORS)}")
    if platform.emulator is None:
        t = platform.twin_mode
        kind = "same-core twin" if t.mode == "proxy" else "cross-core stand-in"
        hint = f"`twin run --platform {t.proxy}` runs its {kind}; " if t.proxy else ""
        raise RunError(f"platform {platform.id} has no emulator model: {hint}`twin predict --platform "
                       f"{platform.id}` predicts it; `twin bench --port PORT` measures the board")
    if emulator == "renode":
        if mem_traffic:
            raise RunError(f"--mem-traffic is not available with Renode: {renode.UNAVAILABLE['mem']}; "
                           "count it under QEMU (drop --emulator renode)")
        reason = renode.available()
        if reason is not None:
            raise RunError(reason)
        renode.renode_platform(platform)      # a RenodeError for what Renode cannot model or count (Helium)


@contextmanager
def profiled_session(platform: Platform, elf: Path, image: Path | None, *, mem_traffic: bool = False,
                     timeout: float = 120.0, reply_timeout: float = 30.0, emulator: str = "qemu",
                     icaches: tuple[CacheGeometry, ...] | None = None, edges: bool = True) -> Iterator[Session]:
    """An emulator session that counts: QEMU under the profiling plugin, or Renode with its opcode
    counters. When the block ends and the backend has ended, ``session.segments`` holds the counts cut at
    the firmware's markers (boot | phase | io | phase | …) and ``session.unavailable`` what it could not count.
    ``icaches``: the instruction caches QEMU's plugin simulates (default: twin.profile.counts.catalog_caches);
    with ``mem_traffic`` the catalog's data caches too. ``edges``: the plugin counts the transitions
    between blocks, so every conditional branch's taken / not-taken split is exact (off: derived from
    the block counts where they determine it, twin.profile.counts "Taken branches")."""
    check_emulator(platform, emulator, mem_traffic)
    if emulator == "renode":
        backend = renode.RenodeProcess(platform, elf, image, timeout=timeout)
        with backend_session(backend, reply_timeout) as session:
            yield session
        segments = backend.segments()
        session.segments = [seg.as_profile(SegmentProfile) for seg in segments]
        session.unavailable = {k: v for seg in segments for k, v in seg.unavailable.items()}
        return
    regions = memory_regions(platform) if mem_traffic else None
    dcaches = catalog_caches(platform, DATA_CACHE_KINDS) if mem_traffic else ()   # the loads' caches
    with tempfile.TemporaryDirectory(prefix="twin-profile-") as tmp:
        dump = Path(tmp) / "profile.dump"
        with emulator_session(platform, elf, image, timeout=timeout, reply_timeout=reply_timeout,
                              extra_args=tuple(plugin_args(elf, dump, regions,
                                                           icaches=catalog_caches(platform) if icaches is None
                                                           else icaches, dcaches=dcaches, edges=edges))) as session:
            yield session
        session.dump = parse_dump(dump)
        session.segments = analyze(session.dump, elf, platform.arch)
        session.unavailable = {}


def prompt_tokens(text: str, tokenizer, vocab_size: int) -> tuple[list[int], str | None]:
    """The prompt's token ids for a model, and a note when they are not simply the text's encoding.

    * An empty text is BOS alone (where the tokenizer adds one; noted); a tokenizer that adds no BOS
      gives no token at all, and a model needs one: refused.
    * Byte-level models (no tokenizer; byte b is id b + 3) whose vocabulary is too small for some of
      the text's bytes (random-weight what-ifs, ``twin image --vocab 64``): a prompt given by the
      user is refused, naming the bytes that fit; the default prompt is folded into the vocabulary
      (BOS, then id 3 + byte mod (vocab − 3): as many tokens as the text, so the same prefill work) and
      noted. A tokenizer whose ids exceed the vocabulary is not the model's: refused.
    """
    ids = tokenizer.encode(text) if tokenizer else modelgen.encode(text)
    note = None
    if not ids:
        raise RunError("an empty prompt gives no token with this model's tokenizer (it adds no BOS), and a "
                       "model needs at least one: give --prompt TEXT")
    if text == "":
        note = f"empty prompt: BOS alone (id {ids[0]})"
    over = [t for t in ids if not 0 <= t < vocab_size]
    if not over:
        return ids, note
    if tokenizer is not None:
        raise RunError(f"the model's tokenizer ({getattr(tokenizer, 'name', None) or 'sidecar'}) gives ids up to {max(over)} for "
                       f"the prompt, beyond the model's vocabulary of {vocab_size}: it is not this model's "
                       "tokenizer (`twin image` writes the right one beside the image)")
    fits = vocab_size - 1 - modelgen.BYTE_OFFSET         # the largest byte with an id in the vocabulary
    if text != DEFAULT_PROMPT:
        printable = [chr(b) for b in range(32, min(fits, 126) + 1)]
        which = (f"printable: {printable[0]!r} to {printable[-1]!r}" if printable else "no printable character")
        holds = f"holds only bytes 0..{fits} ({which})" if fits >= 0 else "holds no byte (BOS only: --prompt '')"
        raise RunError(f"--prompt {text!r}: this model has no tokenizer, so the prompt is byte-level (byte b is "
                       f"id b+{modelgen.BYTE_OFFSET}), and its vocabulary of {vocab_size} {holds}; give a prompt "
                       "of those bytes, or an image with a larger vocabulary")
    body = [modelgen.BYTE_OFFSET + b % (fits + 1) for b in text.encode("utf-8")] if fits >= 0 else []
    ids = ids[:1] + body
    shown = f"ids {modelgen.BYTE_OFFSET}..{vocab_size - 1} (id = {modelgen.BYTE_OFFSET} + byte mod {fits + 1})" \
        if body else "nothing (no byte fits)"
    note = (f"the default prompt {text!r} does not fit this byte-level model's vocabulary of {vocab_size}: "
            f"ran BOS + its bytes folded into {shown}; --prompt with bytes 0..{max(fits, 0)} chooses the text"
            if body else f"the default prompt {text!r} does not fit this model's vocabulary of {vocab_size}: "
            "ran BOS alone")
    return ids, note


def _wait_cycles(platform: Platform, dump: Dump | None, elf: Path, phases: list[Phase]) -> dict | None:
    """``{"model", "wait_states", "flash_loads", "validate", "prefill", "decode", "decode_by_function"}``: the
    cycles the board's flash wait states add to each phase as twin.profile.fetch_path simulates the core's fetch path,
    from the plugin's block and edge counts (the phase's segments, ``phases`` in segment order); None
    where no model applies (fetch_path.board_wait_states) or there is no dump with edges."""
    ws = fetch_path.board_wait_states(platform)
    if ws is None or dump is None or dump.edges is None:
        return None
    out: dict = {"model": fetch_path.MODELS[platform.core].report, "wait_states": ws,
                 "flash_loads": dump.mem_sites is not None}
    for name, kind in (("validate", PhaseKind.VALIDATE), ("prefill", PhaseKind.PREFILL),
                       ("decode", PhaseKind.DECODE)):
        segs = [2 * i + 1 for i, ph in enumerate(phases) if ph.kind == kind]
        r = fetch_path.wait_cycles(dump, elf, segs, ws, core=platform.core) if segs else {"cycles": 0.0, "by_function": {}}
        out[name] = r["cycles"]
        if name == "decode":
            out["decode_by_function"] = r["by_function"]     # they sum to decode
    return out


def run(spec: RunSpec, on_phase: Callable[[Phase], None] | None = None) -> dict:
    """Profile one generation on one emulated platform; returns the report (see ``twin run --json``)."""
    return run_with_dump(spec, on_phase)[0]


def run_decode_profiles(spec: RunSpec) -> tuple[dict, list[SegmentProfile], Dump]:
    """``run_with_dump``, also returning the profile of each decoded token (QEMU only): one emulator run
    gives the report and the per-token counts (by function, class, region, cache)."""
    phases: list[Phase] = []
    report, dump = run_with_dump(spec, on_phase=phases.append)
    if dump is None:
        raise RunError("per-token profiles need the profiling plugin: run under QEMU (not Renode)")
    platform = with_kernels(get_platform(spec.platform), spec.kernels)
    segments = analyze(dump, report["firmware"]["elf"], platform.arch)
    n_boot = (len(segments) - 1) // 2 - len(phases)      # segments: boot | phase | io | phase | … | io
    decode = [segments[2 * (n_boot + j) + 1] for j, ph in enumerate(phases) if ph.kind == PhaseKind.DECODE]
    return report, decode, dump


def run_with_dump(spec: RunSpec, on_phase: Callable[[Phase], None] | None = None) -> tuple[dict, Dump | None]:
    """``run``, also returning the plugin's dump (per-block counts, segments boot | phase | io | …),
    for analyses beyond the report's totals (e.g. calibration.mca's per-block cycle estimate); None
    under Renode (no per-block counts)."""
    started = time.perf_counter()
    platform = with_kernels(get_platform(spec.platform), spec.kernels)
    check_emulator(platform, spec.emulator, spec.mem_traffic)
    firmware = build_firmware(platform)
    image_path, image, model_name = model_image(spec)
    _check_fits(platform, image)
    reference = QuantReference(read_image(image))
    tokenizer = model_tokenizer(spec.model)
    prompt_ids, prompt_note = prompt_tokens(spec.prompt, tokenizer, reference.config.vocab_size)
    seq_len = reference.config.seq_len
    if len(prompt_ids) + spec.tokens > seq_len:
        raise RunError(f"prompt ({len(prompt_ids)} tokens) + {spec.tokens} new tokens exceed the model's "
                       f"context of {seq_len}: shorten the prompt or ask for fewer tokens")
    # (Not in a thread beside the emulator: runs in threads then lost an emulator's start now and then.)
    expected = reference.generate(prompt_ids, spec.tokens, seed=spec.seed, temperature=spec.temperature,
                                  topp=spec.topp)
    with profiled_session(platform, firmware.elf, image_path, mem_traffic=spec.mem_traffic,
                          timeout=spec.timeout, reply_timeout=spec.reply_timeout, emulator=spec.emulator) as s:
        if s.info.status != 0:
            raise DeviceError(s.info.status, request="model image check")
        phases, result = s.device.run(prompt_ids, spec.tokens, seed=spec.seed,
                                      temperature=spec.temperature, topp=spec.topp, on_phase=on_phase)
        mem = s.device.mem()
    segments, info, dump, unavailable = s.segments, s.info, s.dump, s.unavailable
    board = None
    if platform.rtl is not None and spec.board:   # the board is an RTL simulation: the same requests on it
        with rtl_session(platform, firmware.elf, image_path, timeout=spec.timeout * RTL_SLOWDOWN,
                         reply_timeout=spec.reply_timeout * RTL_SLOWDOWN) as b:
            board_phases, _ = b.device.run(prompt_ids, spec.tokens, seed=spec.seed, temperature=spec.temperature,
                                           topp=spec.topp)
        board = _rtl_report(platform, [*b.boot_phases, *board_phases], [*s.boot_phases, *phases], segments,
                            expected, b.backend.stats())
        phases = board_phases          # cycles: the board's counter

    all_phases = [*s.boot_phases, *phases]
    expected_segments = 2 * len(all_phases) + 1
    if len(segments) != expected_segments:
        raise RunError(f"the profile has {len(segments)} segments but the firmware reported "
                       f"{len(all_phases)} phases ({expected_segments} segments expected): "
                       "the phase markers and the protocol disagree")
    of_kind = {k: [segments[2 * i + 1] for i, ph in enumerate(all_phases) if ph.kind == k] for k in PhaseKind}
    prefill, decode = of_kind[PhaseKind.PREFILL], of_kind[PhaseKind.DECODE]
    prefill_sum, decode_sum = sum_profiles(prefill), sum_profiles(decode)
    inference = sum_profiles([prefill_sum, decode_sum])
    wait_cycles = _wait_cycles(platform, dump, firmware.elf, all_phases)
    tokens = [p.token for p in phases if p.kind == PhaseKind.DECODE]
    ranked = sorted(inference.by_function.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "platform": platform.id,
        "emulator": spec.emulator,
        "model": model_name,
        "bits": spec.bits if spec.model == "builtin" else image_bits(reference.model),
        "kv_cache": reference.model.kv_cache,
        "prompt_tokens": prompt_ids,
        "prompt_note": prompt_note,      # None, or how the prompt given became these tokens
        "tokens": tokens,
        "text": tokenizer.decode(tokens) if tokenizer else modelgen.decode(tokens),
        "reference_tokens": expected,
        "matches_reference": tokens == expected and (board is None or board["matches_reference"]),
        "instructions": {
            "total": inference.total,
            "by_class": inference.by_class,
            "by_phase": {
                "validate": sum(s.total for s in of_kind[PhaseKind.VALIDATE]),
                "prefill": prefill_sum.total,
                "decode": [s.total for s in decode],
            },
            "by_phase_class": {"prefill": prefill_sum.by_class, "decode": decode_sum.by_class},
            # Control transfers (twin/profile/counts.py "Taken branches"): unresolved conditional branches
            # are in neither taken nor not_taken.
            "branches": _branches(inference, unavailable),
            "by_phase_branches": {"prefill": _branches(prefill_sum, unavailable),
                                  "decode": _branches(decode_sum, unavailable)},
            # bytes of instructions executed: what a fetch unit reads (compressed code: fewer words)
            "by_phase_fetch_bytes": {"prefill": prefill_sum.fetch_bytes, "decode": decode_sum.fetch_bytes},
            # simulated instruction caches (twin.profile.counts.catalog_caches), by geometry: line lookups, misses, prefetched
            "by_phase_icache": {"prefill": prefill_sum.icache, "decode": decode_sum.icache},
            # and data caches (memory-traffic runs): load lookups and misses from the code and model windows
            "by_phase_dcache": {"prefill": prefill_sum.dcache, "decode": decode_sum.dcache},
            # the decoded tokens per function (summed): what calibration.predict splits the cycles by
            "decode_by_function": function_table(decode_sum),
            # the cycles the flash wait states add as the twin simulated the core's fetch path (Ibex without
            # instruction cache, CV32E40P without FPU: twin.profile.fetch_path), decode summed over the tokens;
            # None elsewhere
            "by_phase_wait_cycles": wait_cycles,
        },
        "functions": [{"name": k, "instructions": v} for k, v in ranked if v > 0],
        "memory_traffic": {"prefill": prefill_sum.mem, "decode": decode_sum.mem} if spec.mem_traffic else None,
        "cycles": {
            "counter": platform.cycle_counter,
            "prefill": sum(p.cycles for p in phases if p.kind == PhaseKind.PREFILL),
            "decode": [p.cycles for p in phases if p.kind == PhaseKind.DECODE],
        },
        "memory": {
            "flash_bytes": mem.flash_used,
            "ram_static_bytes": mem.ram_static,
            "stack_peak_bytes": max(mem.stack_peak, result.stack_peak),
            "arena_bytes": mem.arena_used,
            "model_image_bytes": len(image),
            "ram_bytes": platform.ram.size,
        },
        "firmware": {"build_id": info.build_id, "elf": str(firmware.elf), "kernels": platform.kernels},
        "clock_hz": info.clock_hz,
        "board": board,
        # report field -> why this backend could not count it (its value is then [] or None, not a guess)
        "unavailable": {REPORT_FIELDS[k]: why for k, why in unavailable.items()},
        "wall_seconds": round(time.perf_counter() - started, 3),
    }, dump


def with_board(report: dict, device: str, spec: RunSpec) -> dict:
    """``report`` (the twin's run of ``spec``) plus the same request on the board ``device`` of the
    hardware map (twin/device/hardware.py): flashed, its tokens against the reference and its cycle
    counter per phase (`twin run --device`, `twin profile --device`)."""
    from twin.device.board import board_for, run_on_board

    entry, _ = board_for(device)
    fw = report["firmware"]
    board = run_on_board(entry, get_platform(report["platform"]), Path(fw["elf"]), fw["build_id"],
                         model_image(spec)[0], report["prompt_tokens"], spec.tokens, seed=spec.seed,
                         temperature=spec.temperature, topp=spec.topp, expected=report["reference_tokens"],
                         reply_timeout=spec.reply_timeout)
    return {**report, "board": board, "cycles": board["cycles"],
            "matches_reference": report["matches_reference"] and board["matches_reference"]}


def _rtl_report(platform: Platform, board: list[Phase], twin: list[Phase], segments: list[SegmentProfile],
                expected: list[int], stats: dict | None) -> dict:
    """What the RTL board measured, and the cross-check no other tool has: its retired-instruction
    counter (minstret between the marks) against the twin's plugin count, phase by phase."""
    if [(p.kind, p.index) for p in board] != [(p.kind, p.index) for p in twin]:
        raise RunError("the RTL board and the twin ran different phases: the join by phase fails")
    twin_counts = [segments[2 * i + 1].total for i in range(len(twin))]
    instret = [p.instret for p in board]
    tokens = [p.token for p in board if p.kind == PhaseKind.DECODE]
    mismatch = [i for i, (a, b) in enumerate(zip(instret, twin_counts, strict=True)) if a != b]
    return {
        "kind": "rtl",
        "core": platform.rtl.core,
        "flash_wait_states": platform.rtl.flash_wait_states,
        "tokens": tokens,
        "matches_reference": tokens == expected,
        "instret": instret,
        "twin_instructions": twin_counts,
        "instret_equals_twin": not mismatch,
        "instret_mismatches": [{"phase": i, "board": instret[i], "twin": twin_counts[i]} for i in mismatch],
        "simulation": stats,
    }


def _branches(p, unavailable: dict[str, str]) -> dict:
    return {"taken": p.branches_taken,
            "not_taken": None if "branches_not_taken" in unavailable else p.branches_not_taken,
            "unresolved": p.branches_unresolved}


def _emulator_failure(exc: Exception, backend: Backend, exited: int | None) -> str:
    err = backend.stderr()
    detail = f" {backend.name} said: {err}" if err else ""
    if isinstance(exc, DeviceTimeout):
        return f"{exc}. The firmware is hung; {backend.name} was killed.{detail}"
    status = f" ({backend.name} exited with status {exited})" if exited is not None else ""
    return f"{exc}. The emulator stopped unexpectedly{status}.{detail}"
