"""Prediction and what-if for every catalog board, present or not.

The twin's counts come from running the model on the board's emulated platform: the board itself
(twin mode ``exact``), the same core elsewhere (``proxy``), or another core mapped across
(``none``, low confidence).  Counts are cached per (emulated platform, firmware build id, model image
hash, run parameters), so comparing boards that share a proxy runs QEMU once.  The cycle model
(``calibration.cycles``: a prior from published timings, or a calibration file) turns counts into
time at the chosen clock and the board's flash wait states; the energy model
(``calibration.energy``) turns time into energy.

``predict(...)`` returns the ``twin predict --json`` object (contract in docs/calibration.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin import atomic
from twin.platforms import PORTABLE_KERNELS, Platform, get_platform, runs_kernels
from twin.profile import fetch_path
from twin.profile.counts import SegmentProfile, function_table, sum_profiles
from twin.profile.isa import CLASSES

from . import store
from .cycles import (
    FEATURES,
    FLASH_REGIONS,
    CycleModelError,
    MemorySetup,
    core_prior,
    cross_core_factor,
    feature_vector,
    load_tables,
    measured_taken,
    memory_setup,
    prior_coefficients,
)
from .energy import EnergyModelError, VoltageError, check_voltage, power_model
from .mca import McaEstimate
from .residual import StoredResidual

DEFAULT_TOKENS = 8
COUNTS_VERSION = 10
# Relative half-widths of the prior's bands by confidence (not measured coverage: a calibration
# file replaces them with conformal intervals whose coverage was cross-validated).
PRIOR_BANDS = {"high": (0.25, 0.25), "medium": (0.4, 0.4), "low": (0.5, 1.0)}


class PredictError(ValueError):
    """A prediction could not be made; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class TwinCounts:
    """What one generation executes on an emulated platform, by phase."""
    platform: str                     # the emulated platform that ran
    model: str
    build_id: str
    image_sha256: str
    prompt_tokens: int
    tokens: int
    prefill: dict[str, float]         # instructions by class, whole prefill
    decode: dict[str, float]          # instructions by class, per generated token (mean)
    prefill_loads_flash: float | None
    decode_loads_flash: float | None  # per token
    memory: dict                      # flash_bytes, ram_static_bytes, arena_bytes, stack_peak_bytes, model_image_bytes
    matches_reference: bool
    fpu: str                          # of the platform that ran (for cross-core soft-float)
    prefill_branches_taken: float | None = None   # taken branches counted by the profiler (None: unknown)
    decode_branches_taken: float | None = None    # per token
    kernels: str = "ref"              # the kernel set of the build that ran (firmware/kernels)
    prefill_fetch_bytes: float | None = None      # instruction bytes executed (None: not counted)
    decode_fetch_bytes: float | None = None       # per token
    # per token, per function: instructions, by_class, fetch_bytes, branches_taken, branches_unresolved,
    # loads_flash, icache_misses, dcache_misses (the run report's instructions.decode_by_function / tokens; None: not
    # counted)
    decode_functions: dict[str, dict] | None = None
    # simulated instruction caches by geometry key: lookups, misses, prefetched (decode: per token;
    # None: not simulated)
    prefill_icache: dict[str, dict[str, float]] | None = None
    decode_icache: dict[str, dict[str, float]] | None = None
    # simulated data caches (memory-traffic runs) by key: lookups, misses of the flash loads; likewise
    prefill_dcache: dict[str, dict[str, float]] | None = None
    decode_dcache: dict[str, dict[str, float]] | None = None
    # the cycles the flash wait states add as the twin simulated the core's fetch path at wait_cycles_ws
    # wait states (twin.profile.fetch_path; decode: per token; None: not simulated), and whether they
    # include the flash loads' data waits
    prefill_wait_cycles: float | None = None
    decode_wait_cycles: float | None = None
    wait_cycles_ws: float | None = None
    wait_cycles_loads: bool = True

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


_MEMO: dict[str, TwinCounts] = {}
STATS = {"runs": 0, "cache_hits": 0}


def _run_spec(platform: str, model: str, bits: int, tokens: int, prompt: str | None, kernels: str | None = None):
    from twin.runner import DEFAULT_PROMPT, RunSpec

    prompt = DEFAULT_PROMPT if prompt is None else prompt      # "" is a prompt too: BOS alone
    return RunSpec(platform=platform, model=model, bits=bits, tokens=tokens, prompt=prompt,
                   kernels=kernels, mem_traffic=True, board=False)   # counts: the twin alone


def _counts_cache_dir() -> Path:
    from twin.device.build import cache_dir

    d = cache_dir() / "counts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def counts_key(platform: str, *, model: str = "builtin", bits: int = 4, tokens: int = DEFAULT_TOKENS,
               prompt: str | None = None, kernels: str | None = None):
    """(cache key, RunSpec, model image sha256, model name) of one generation; the key covers (platform,
    firmware build id, model image hash, bits, tokens, prompt, the cache geometries the run simulates:
    a board file given a geometry gets counts that simulate it). The twin's counts and the executed
    blocks (calibration.mca) share it."""
    from twin.device.build import build_firmware
    from twin.platforms import with_kernels
    from twin.profile.counts import DATA_CACHE_KINDS, catalog_caches
    from twin.runner import model_image

    spec = _run_spec(platform, model, bits, tokens, prompt, kernels)
    plat = with_kernels(get_platform(platform), kernels)
    build_id = build_firmware(plat).build_id
    _, image, name = model_image(spec)
    image_sha = hashlib.sha256(image).hexdigest()
    caches = ([g.arg("icache") for g in catalog_caches(plat)]
              + [g.arg("dcache") for g in catalog_caches(plat, DATA_CACHE_KINDS)])
    key_src = json.dumps([COUNTS_VERSION, platform, build_id, image_sha, bits, tokens, spec.prompt, caches])
    key = f"{platform}-{build_id}-{image_sha[:12]}-{hashlib.sha256(key_src.encode()).hexdigest()[:12]}"
    return key, spec, image_sha, name


def twin_counts(platform: str, *, model: str = "builtin", bits: int = 4, tokens: int = DEFAULT_TOKENS,
                prompt: str | None = None, on_run: Callable[[str], None] | None = None,
                kernels: str | None = None) -> TwinCounts:
    """Counts of one generation on the emulated ``platform``; cached in memory and on disk per
    (platform, firmware build id, model image hash, bits, tokens, prompt). ``on_run(platform)`` is
    called before an emulator run (a cache miss), e.g. to show progress."""
    from . import mca

    key, spec, image_sha, name = counts_key(platform, model=model, bits=bits, tokens=tokens, prompt=prompt,
                                            kernels=kernels)
    if key in _MEMO:     # the same image may carry another name (a file vs 'builtin'): keep this one's
        STATS["cache_hits"] += 1
        return dataclasses.replace(_MEMO[key], model=name)
    path = _counts_cache_dir() / f"{key}.json"
    if path.exists():
        try:
            counts = TwinCounts(**json.loads(path.read_text()))
            _MEMO[key] = counts
            STATS["cache_hits"] += 1
            return dataclasses.replace(counts, model=name)
        except (json.JSONDecodeError, TypeError):
            path.unlink(missing_ok=True)      # a stale or torn file: run again
    if on_run is not None:
        on_run(platform)
    report, blocks = mca.run_recording_blocks(spec)    # the same run also gives the executed blocks
    STATS["runs"] += 1
    if blocks is not None:
        mca.save_phase_blocks(key, blocks)
    counts = counts_from_report(report, image_sha)
    atomic.write_text(path, json.dumps(counts.to_json()))
    _MEMO[key] = counts
    return counts


def counts_from_report(report: dict, image_sha: str = "") -> TwinCounts:
    """Per-phase counts from a run report (``twin run --json``)."""
    ins = report["instructions"]
    n_dec = max(len(ins["by_phase"]["decode"]), 1)
    bpc = ins.get("by_phase_class")
    if bpc is None:   # older reports: split the class mix by the phases' instruction totals
        total = max(ins["total"], 1)
        pre_share = ins["by_phase"]["prefill"] / total
        bpc = {"prefill": {c: v * pre_share for c, v in ins["by_class"].items()},
               "decode": {c: v * (1 - pre_share) for c, v in ins["by_class"].items()}}
    traffic = report.get("memory_traffic") or {}

    def flash_loads(phase: str) -> float | None:
        mem = traffic.get(phase)
        if not mem:
            return None
        return float(sum(mem.get(r, {}).get("loads", 0) for r in FLASH_REGIONS))

    branches = ins.get("by_phase_branches") or {}

    def taken(phase: str) -> float | None:
        b = branches.get(phase)
        return None if b is None else measured_taken(b["taken"], b["unresolved"])

    dec_loads = flash_loads("decode")
    dec_taken = taken("decode")
    fetch = ins.get("by_phase_fetch_bytes") or {}
    plat = get_platform(report["platform"])
    wait = ins.get("by_phase_wait_cycles")
    return TwinCounts(
        platform=report["platform"], model=report["model"], build_id=report["firmware"]["build_id"],
        image_sha256=image_sha, prompt_tokens=len(report.get("prompt_tokens", [])),
        tokens=len(ins["by_phase"]["decode"]),
        prefill={c: float(bpc["prefill"].get(c, 0)) for c in CLASSES},
        decode={c: float(bpc["decode"].get(c, 0)) / n_dec for c in CLASSES},
        prefill_loads_flash=flash_loads("prefill"),
        decode_loads_flash=None if dec_loads is None else dec_loads / n_dec,
        prefill_branches_taken=taken("prefill"),
        decode_branches_taken=None if dec_taken is None else dec_taken / n_dec,
        memory={k: report["memory"].get(k, 0) for k in ("flash_bytes", "ram_static_bytes", "arena_bytes",
                                                        "stack_peak_bytes", "model_image_bytes")},
        matches_reference=bool(report.get("matches_reference", False)),
        fpu=plat.fpu,
        kernels=report.get("firmware", {}).get("kernels", "ref"),
        prefill_fetch_bytes=None if "prefill" not in fetch else float(fetch["prefill"]),
        decode_fetch_bytes=None if "decode" not in fetch else float(fetch["decode"]) / n_dec,
        decode_functions=_with_wait_cycles(_per_token_functions(ins.get("decode_by_function"), n_dec), wait, n_dec),
        prefill_icache=_per_token_caches(ins, "prefill", 1),
        decode_icache=_per_token_caches(ins, "decode", n_dec),
        prefill_dcache=_per_token_caches(ins, "prefill", 1, "by_phase_dcache"),
        decode_dcache=_per_token_caches(ins, "decode", n_dec, "by_phase_dcache"),
        prefill_wait_cycles=None if wait is None else float(wait["prefill"]),
        decode_wait_cycles=None if wait is None else float(wait["decode"]) / n_dec,
        wait_cycles_ws=None if wait is None else float(wait["wait_states"]),
        wait_cycles_loads=True if wait is None else bool(wait["flash_loads"]),
    )


def _with_wait_cycles(functions: dict[str, dict] | None, wait: dict | None, n: int) -> dict[str, dict] | None:
    """Each function's share of the simulated wait cycles (per token), where the report has them."""
    if functions is None or wait is None or "decode_by_function" not in wait:
        return functions
    by_fn = wait["decode_by_function"]
    return {f: {**d, "wait_cycles": float(by_fn.get(f, 0.0)) / n} for f, d in functions.items()}


def _per_token_caches(ins: dict, phase: str, n: int, field: str = "by_phase_icache") -> dict[str, dict[str, float]] | None:
    stats = (ins.get(field) or {}).get(phase)
    return {k: {s: v / n for s, v in d.items()} for k, d in stats.items()} if stats else None


def _per_token_functions(by_function: dict | None, n: int) -> dict[str, dict] | None:
    """A report's decode_by_function (summed over the tokens) per token; None when it has none."""
    if not by_function:
        return None
    def flash(d: dict) -> float | None:        # loads from flash, where the plugin counted them per function
        mem = d.get("mem")
        return None if mem is None else sum(mem.get(r, {}).get("loads", 0) for r in FLASH_REGIONS) / n

    return {f: {"instructions": d["instructions"] / n, "by_class": {c: v / n for c, v in d["by_class"].items()},
                "fetch_bytes": d["fetch_bytes"] / n, "branches_taken": d["branches_taken"] / n,
                "branches_unresolved": d["branches_unresolved"] / n, "loads_flash": flash(d),
                "icache_misses": {k: m / n for k, m in (d.get("icache_misses") or {}).items()} or None,
                "dcache_misses": {k: m / n for k, m in (d.get("dcache_misses") or {}).items()} or None}
            for f, d in by_function.items()}


def _flash_left(loads_flash: float | None, functions: dict[str, dict]) -> float | None:
    """The token's flash loads no function was given (all of them without per-function counts)."""
    if loads_flash is None or any(d.get("loads_flash") is None for d in functions.values()):
        return loads_flash
    return max(loads_flash - sum(d["loads_flash"] for d in functions.values()), 0.0)


def _features(mem: MemorySetup, width: float | None, by_class: Mapping[str, float], *,
              loads_flash: float | None, branches_taken: float | None, fetch_bytes: float | None,
              icache: Mapping | None, dcache: Mapping | None = None,
              wait: tuple[float, bool] | None = None) -> np.ndarray:
    """``feature_vector`` of one count set for the board of ``mem``: with the fetches (loads) that wait
    from the counts' simulation of its instruction (data) cache where they carry one (``icache``,
    ``dcache``; the caller gives none for code of another ISA), else from its assumed miss fractions."""
    fills = mem.fetch_fills(icache, fetch_bytes=fetch_bytes, instructions=sum(by_class.values()))
    return feature_vector(by_class, wait_states=mem.wait_states, loads_flash=loads_flash,
                          branches_taken=branches_taken, fetch_bytes=fetch_bytes, fetch_width=width,
                          fetch_miss=mem.fetch_miss, fetch_fills=fills, load_miss=mem.load_miss,
                          load_fills=mem.load_fills(dcache), wait_cycles=None if wait is None else wait[0],
                          wait_cycles_loads=True if wait is None else wait[1])


def _function_cache(d: dict, field: str = "icache_misses") -> dict | None:
    """A function's simulated misses as cache statistics (its prefetched lines are not counted per
    function: their exposed part is the unattributed rest's); ``field`` "dcache_misses": its loads'."""
    m = d.get(field) if d.get("same_isa", True) else None
    return None if m is None else {k: {"misses": v, "prefetched": 0.0} for k, v in m.items()}


def _split_by_function(bm: BoardModel, mem: MemorySetup, width: float | None, functions: dict[str, dict],
                       residual_factor: float = 1.0) -> dict[str, dict]:
    """The cycle model applied to each function (per token: instructions, by_class, branches_taken,
    fetch_bytes and, where the plugin counted them per function, loads_flash), its terms by feature;
    flash-load waits not counted per function are the caller's (``_unattributed``). The
    cross-core factor, the soft-float calls and a calibration's residual factor (the whole token's
    1 + r: it depends on the token's mix) apply as to the whole."""
    out = {}
    for f, d in functions.items():
        wait = d.get("wait")       # (its simulated wait cycles, whether they include the flash loads'), or None
        x = _features(mem, width, d["by_class"], loads_flash=d.get("loads_flash") or 0.0,
                      branches_taken=d["branches_taken"], fetch_bytes=d["fetch_bytes"], icache=_function_cache(d),
                      dcache=_function_cache(d, "dcache_misses"), wait=wait)
        t = {name: float(v) * bm.factor * residual_factor for name, v in zip(FEATURES, x * bm.coef, strict=True)}
        if bm.extra_per_fp:
            t["soft_float_calls"] = bm.extra_per_fp * _fp_ops(d["by_class"])
        out[f] = {"instructions": d["instructions"], "cycles": sum(t.values()), "terms": t}
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["cycles"], kv[0])))


# ---------------------------------------------------------------------------------------------
# Counts of one's own firmware (`twin count`, twin/profile/own.py) for `twin predict --counts`
# ---------------------------------------------------------------------------------------------
COUNT_FORMAT = "tinyllm-twin-count"
_ARM_SUPERSETS = {   # an ISA's code runs on these (M-profile: v6-M ⊂ v7-M ⊂ v7E-M ⊂ v8-M Mainline + DSP)
    "armv6-m": ("armv6-m", "armv7-m", "armv7e-m", "armv8-m.base", "armv8-m.main", "armv8.1-m.main"),
    "armv8-m.base": ("armv8-m.base", "armv8-m.main", "armv8.1-m.main"),
    "armv7-m": ("armv7-m", "armv7e-m", "armv8-m.main", "armv8.1-m.main"),
    "armv7e-m": ("armv7e-m", "armv8-m.main", "armv8.1-m.main"),
    "armv8-m.main": ("armv8-m.main", "armv8.1-m.main"),
    "armv8.1-m.main": ("armv8.1-m.main",),
}


def _rv_extensions(isa: str) -> tuple[str, set[str]]:
    parts = isa.lower().split("_")
    base, letters = parts[0][:4], parts[0][4:].replace("g", "imafd")
    return base, set(letters) | {x for x in parts[1:] if x}


def isa_runs_on(code_isa: str, board_isa: str) -> bool:
    """True when code built for ``code_isa`` runs on a core of ``board_isa`` (the board's is a superset).
    RISC-V: the base matches and every extension of the code is the board's (zicsr/zifencei/zmmul are
    taken as present on every RV32 board here: they are part of I / implied by M)."""
    if code_isa in _ARM_SUPERSETS:
        return board_isa in _ARM_SUPERSETS[code_isa]
    if code_isa.startswith("rv") and board_isa.startswith("rv"):
        (cb, ce), (bb, be) = _rv_extensions(code_isa), _rv_extensions(board_isa)
        implied = {"zicsr", "zifencei"} | ({"zmmul"} if "m" in be else set())
        return cb == bb and ce <= be | implied
    return code_isa == board_isa


def counts_from_count_file(path: Path | str, data: dict | None = None) -> TwinCounts:
    """Counts for predict_from_counts from a `twin count --json` file. The *step* (what a token stands
    for) is one entry of the last --phase symbol (the mean over its entries); everything outside that
    phase is the "prefill" (time to first token = it + one step). Without phases the whole run is one
    step and the prefill is empty."""
    if data is None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PredictError(f"count file {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != COUNT_FORMAT:
        raise PredictError(f"{path} is not a `twin count --json` file (format {COUNT_FORMAT!r})")
    try:
        ins = data["instructions"]
        phases = list(data["phases"])
        step = phases[-1] if len(phases) > 1 else None
        by_class = ins["by_phase_class"]
        traffic = data.get("memory_traffic") or {}
        branches = ins.get("by_phase_branches") or {}
        fetch = ins.get("by_phase_fetch_bytes") or {}
        rest = [p for p in phases if p != step] if step else []
        on = [step] if step else phases
        n = len(ins["by_phase_entries"][step]) if step else 1

        def mix(names, div=1):
            return {c: sum(float(by_class[p].get(c, 0)) for p in names) / div for c in CLASSES}

        def loads(names, div=1):
            if not traffic or any(traffic.get(p) is None for p in names):
                return None
            return sum(traffic[p].get(r, {}).get("loads", 0) for p in names for r in FLASH_REGIONS) / div

        def taken(names, div=1):
            if any(p not in branches for p in names):
                return None
            return sum(measured_taken(branches[p]["taken"], branches[p]["unresolved"]) for p in names) / div

        def fetched(names, div=1):
            return None if any(p not in fetch for p in names) else sum(float(fetch[p]) for p in names) / div

        def cached(names, div=1, field="by_phase_icache"):     # the simulated caches every phase of names has
            sims = ins.get(field) or {}
            if not names or any(not sims.get(p) for p in names):
                return None
            keys = set.intersection(*(set(sims[p]) for p in names))
            return {k: {s: sum(float(sims[p][k][s]) for p in names) / div for s in sims[names[0]][k]}
                    for k in sorted(keys)} or None

        plat = get_platform(data["platform"])
        mem = data.get("memory") or {}
        return TwinCounts(
            platform=plat.id, model=Path(data.get("elf", "firmware")).name,
            build_id=str(data.get("elf_sha256", ""))[:16], image_sha256="", prompt_tokens=0, tokens=n,
            prefill=mix(rest), decode=mix(on, n),
            prefill_loads_flash=loads(rest) if rest else (0.0 if traffic else None),
            decode_loads_flash=loads(on, n),
            prefill_branches_taken=taken(rest) if rest else 0.0, decode_branches_taken=taken(on, n),
            prefill_fetch_bytes=fetched(rest) if rest else 0.0, decode_fetch_bytes=fetched(on, n),
            prefill_icache=cached(rest), decode_icache=cached(on, n),
            prefill_dcache=cached(rest, 1, "by_phase_dcache"), decode_dcache=cached(on, n, "by_phase_dcache"),
            memory={"flash_bytes": int(mem.get("flash_bytes", 0)), "ram_static_bytes": int(mem.get("ram_static_bytes", 0)),
                    "arena_bytes": 0, "stack_peak_bytes": 0, "model_image_bytes": int(mem.get("loaded_bytes", 0))},
            matches_reference=None, fpu=plat.fpu, kernels="own firmware",
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise PredictError(f"count file {path}: malformed ({type(exc).__name__}: {exc})") from None


def predict_from_count_file(platform: str, path: Path | str, **kw) -> dict:
    """`twin predict --counts FILE --platform BOARD`: a catalog board whose ISA runs the counted code."""
    if not Path(path).is_file():
        raise PredictError(f"count file {path} not found")
    try:
        data = json.loads(Path(path).read_text(errors="replace"))
    except json.JSONDecodeError:
        data = None
    counts = counts_from_count_file(path, data if data is not None else {})
    plat = get_platform(platform)
    code_isa = data.get("elf_isa") or data.get("isa")
    ran = get_platform(counts.platform)
    if plat.arch != ran.arch or not isa_runs_on(code_isa, plat.isa):
        fits = [p.id for p in _catalog_boards() if p.arch == ran.arch and isa_runs_on(code_isa, p.isa)]
        raise PredictError(f"{plat.id} ({plat.isa}) cannot run the counted code ({code_isa}, counted on "
                           f"{ran.id}); boards that can: {', '.join(fits) or 'none'}")
    r = predict_from_counts(plat, counts, **kw)
    phases = data["phases"]
    step = phases[-1] if len(phases) > 1 else None
    r["notes"].append(f"counts from `twin count` of {data.get('elf')} on {ran.id} ({code_isa}): " +
                      (f"a token = one entry of {step} (mean of {counts.tokens}), the prefill = every other "
                       f"phase ({', '.join(p for p in phases if p != step)})" if step else
                       "the whole run as one step (no --phase), no prefill"))
    if plat.twin_mode.mode == "none":
        r["notes"].append(f"{plat.id} has no emulator of its core: the counts are of code it runs, the "
                          "cycles are the cross-core model's")
    return r


def _catalog_boards() -> list[Platform]:
    from twin.platforms import all_platforms

    return [p for p in all_platforms().values() if p.twin is not None]


# ---------------------------------------------------------------------------------------------
# The cycle model for one board
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoardModel:
    """coef over FEATURES for this board's counts (possibly a proxy's), plus how to widen it."""
    coef: np.ndarray
    factor: float                  # cross-core multiplier (1 for same core)
    extra_per_fp: float            # soft-float cycles added per FP instruction of the proxy (_fp_ops)
    rel_low: float
    rel_high: float
    source: str                    # calibration id or "prior"
    energy_coef: np.ndarray | None
    energy_q: float | None
    notes: tuple[str, ...]
    residual: StoredResidual | None = None   # a calibration's boosted correction: cycles × (1 + r(mix))
    kind: str = "prior"                      # "prior", "linear" or "linear+residual"


def calibration_distance(calibration: store.Calibration | None, plat: Platform, clock_hz: int) -> dict:
    """How far a calibration is from the board asked for: ``kind`` one of "prior" (none), "same board",
    "same board, another clock", "same core, another board" (with the wait states of both), and a
    sentence. (Another core is refused by board_model.)"""
    if calibration is None:
        return {"kind": "prior", "detail": "no calibration: published timings of the core"}
    clocks = [int(c) for c in calibration.provenance.get("clocks_hz", [])]
    if plat.id in calibration.boards:
        if not clocks or clock_hz in clocks:
            return {"kind": "same board", "detail": f"calibrated on {plat.id} at this clock"}
        return {"kind": "same board, another clock",
                "detail": f"calibrated on {plat.id} at {', '.join(f'{c / 1e6:g}' for c in clocks)} MHz, asked at "
                          f"{clock_hz / 1e6:g} MHz: the wait-state terms carry the difference"}
    ws_here = memory_setup(plat, clock_hz).wait_states
    theirs = []
    for b in calibration.boards:
        try:
            theirs.append(f"{b} {memory_setup(get_platform(b)).wait_states:g}")
        except (CycleModelError, ValueError):
            theirs.append(f"{b} ?")
    return {"kind": "same core, another board",
            "detail": f"calibrated on {', '.join(calibration.boards)} (same core {plat.core}); flash wait states "
                      f"there: {', '.join(theirs)}, here {ws_here:g}: the memory terms are extrapolated and the "
                      "interval was not measured for this board (calibrate on boards that span the wait states: "
                      "docs/calibration.md)"}


def board_model(plat: Platform, clock_hz: int, counts_fpu: str, calibration: store.Calibration | None,
                proxy_core: str) -> BoardModel:
    mode = plat.twin_mode
    mem = memory_setup(plat, clock_hz)
    notes = [f"twin mode {mode.mode} ({mode.confidence} confidence): {mode.note}".rstrip(": "),
             f"flash wait states {mem.wait_states:g}", *mem.notes]
    factor, extra_fp = 1.0, 0.0
    if calibration is not None:
        if calibration.core != plat.core:
            raise PredictError(f"calibration {calibration.id} is for core {calibration.core}, not "
                               f"{plat.id}'s {plat.core}: use a calibration of the same core")
        coef = np.array([calibration.cycles.coef[f] for f in FEATURES])
        q = calibration.cycles.q
        energy_coef = None
        if calibration.energy is not None:
            energy_coef = np.array([calibration.energy.coef[f] for f in (*FEATURES, "seconds")])
        notes.append(f"calibration {calibration.id} (boards {', '.join(calibration.boards)}; "
                     f"{_cv_summary(calibration.cycles.cv)})")
        interval_note = (calibration.cycles.cv.get("interval") or {}).get("note")
        if interval_note:
            notes.append(f"calibration interval: {interval_note}")
        residual = calibration.cycles.stored_residual
        if residual is not None:
            notes.append(f"cycle model: non-negative linear × (1 + boosted residual on the class mix, "
                         f"{len(residual)} trees) from the calibration file")
        else:
            notes.append("cycle model: non-negative linear (the calibration has no residual)")
        if plat.id not in calibration.boards:
            notes.append(f"{plat.id} was not among the calibrated boards: same core, its own wait states")
        return BoardModel(coef, 1.0, 0.0, q, q, calibration.id, energy_coef,
                          calibration.energy.q if calibration.energy else None, tuple(notes),
                          residual, calibration.model_kind)
    if mode.mode == "none" or not core_prior(plat.core).has_timings:
        coef = prior_coefficients(proxy_core)
        factor, why = cross_core_factor(proxy_core, plat.core)
        notes.append(f"cross-core: {proxy_core} prior × {factor:.3f} ({why})")
        if plat.fpu == "none" and counts_fpu != "none":
            soft = load_tables().figure("cross_core", "soft_float_cycles")
            fp_cost = coef[FEATURES.index("n_fp")]
            extra_fp = max(float(soft.value or 0.0) - float(fp_cost) * factor, 0.0)
            notes.append(f"no FPU on {plat.id}: {soft.value:g} cycles per FP op ({soft.source})")
    else:
        coef = prior_coefficients(plat.core)
        notes.append(f"prior: published timings of {plat.core} (calibration/cores.yaml)")
    lo, hi = PRIOR_BANDS[mode.confidence]
    notes.append(f"interval: prior band -{lo:.0%}/+{hi:.0%} for {mode.confidence} confidence "
                 "(not a measured coverage; calibrate to get one)")
    return BoardModel(coef, factor, extra_fp, lo, hi, "prior", None, None, tuple(notes))


def _fp_ops(by_class: Mapping[str, float]) -> float:
    """The FP instructions a soft-float target makes library calls of: classes fp and fdiv."""
    return float(by_class.get("fp", 0.0)) + float(by_class.get("fdiv", 0.0))


def _cv_summary(cv: dict) -> str:
    parts = []
    for split in ("by_workload", "by_board"):
        r = cv.get(split) or {}
        if r.get("mape_percent") is not None:
            cov = f", coverage {r['coverage']:.2f}" if r.get("coverage") is not None else ""
            parts.append(f"CV {split.replace('_', ' ')} MAPE {r['mape_percent']:.2f}%{cov}")
    return "; ".join(parts) or "no cross-validation"


def _cycles(bm: BoardModel, mem: MemorySetup, width: float | None, by_class: dict[str, float],
            loads_flash: float | None, branches_taken: float | None, fetch_bytes: float | None = None,
            icache: Mapping | None = None, dcache: Mapping | None = None,
            wait: tuple[float, bool] | None = None) -> tuple[float, float, dict[str, float]]:
    """(cycles, residual factor 1 + r, cycles by term): the factor is 1 without a residual; the terms
    (one per feature of the cycle model, with the residual and cross-core factors applied, and the
    soft-float calls of a cross-core prediction) add up to the cycles."""
    x = _features(mem, width, by_class, loads_flash=loads_flash, branches_taken=branches_taken,
                  fetch_bytes=fetch_bytes, icache=icache, dcache=dcache, wait=wait)
    factor = 1.0 + float(bm.residual.correction(x[None, :])[0]) if bm.residual is not None else 1.0
    terms = {f: float(v) * factor * bm.factor for f, v in zip(FEATURES, x * bm.coef, strict=True)}
    if bm.extra_per_fp:
        terms["soft_float_calls"] = bm.extra_per_fp * _fp_ops(by_class)
    return sum(terms.values()), factor, terms


def _interval(value: float | None, lo: float, hi: float) -> dict:
    if value is None:
        return {"value": None, "low": None, "high": None}
    return {"value": value, "low": max(value * (1 - lo), 0.0), "high": value * (1 + hi)}


def _resolve_calibration(calibration) -> store.Calibration | None:
    if calibration is None or isinstance(calibration, store.Calibration):
        return calibration
    return store.load(calibration)


def predict(platform: str, *, model: str = "builtin", bits: int = 4, clock_mhz: float | None = None,
            voltage_v: float | None = None, calibration=None, tokens: int = DEFAULT_TOKENS,
            prompt: str | None = None, mca: bool = False, on_run: Callable[[str], None] | None = None) -> dict:
    """Time, tokens/s, energy per token and memory fit of ``model`` on catalog board ``platform``.

    ``mca``: also the second prior, LLVM's scheduling model per executed block (calibration.mca), as
    the ``mca`` object of the result (needs llvm-mca). ``on_run(platform)``: called before each
    emulator run the counts need (none when they are cached)."""
    plat = get_platform(platform)
    proxy = plat.counts_platform
    if proxy is None:
        raise PredictError(f"{plat.id} has no twin mapping (twin.proxy): add one to its platform file")
    cal = _resolve_calibration(calibration)
    _clock(plat, clock_mhz)            # a bad clock or voltage fails before any emulator run
    _voltage(voltage_v)
    if mca:
        from .mca import find_tool

        find_tool()                    # and a missing llvm-mca
    counts = twin_counts(proxy, model=model, bits=bits, tokens=tokens, prompt=prompt, on_run=on_run,
                         kernels=counts_kernels(plat))
    estimate = mca_for_board(plat, model=model, bits=bits, tokens=tokens, prompt=prompt) if mca else None
    return predict_from_counts(plat, counts, clock_mhz=clock_mhz, voltage_v=voltage_v, calibration=cal,
                               mca=estimate)


def counts_kernels(plat: Platform) -> str:
    """The kernel set whose counts stand for ``plat``: its proxy's, when ``plat``'s core can run it
    (arm_dsp needs the Arm DSP extension, mve Helium); otherwise the portable set — an M0+ or an
    Xtensa core predicted from Cortex-M4 counts must not be credited with SMLAD."""
    proxy = get_platform(plat.counts_platform)
    return proxy.kernels if runs_kernels(plat, proxy.kernels) else PORTABLE_KERNELS


def mca_for_board(plat: Platform, **run) -> McaEstimate | str:
    """llvm-mca's estimate for ``plat``'s core on its twin's executed blocks, or why there is none (a
    core without an LLVM scheduling model, a cross-core twin). A missing llvm-mca is an error."""
    from . import mca

    if plat.twin_mode.mode == "none" or plat.counts_platform is None:
        return (f"cross-core twin ({plat.core} predicted from {plat.counts_platform}'s code): llvm-mca "
                "models only the code that ran")
    target = mca.load_targets().get(plat.core)
    if target is None or not target.available:
        return f"no LLVM scheduling model for {plat.core}: " + (target.source if target else "no mca entry")
    mca.find_tool()
    return mca.mca_estimate(plat.counts_platform, core=plat.core, **run)


def _clock(plat: Platform, clock_mhz: float | None) -> int:
    if clock_mhz is not None and (not isinstance(clock_mhz, (int, float)) or not math.isfinite(clock_mhz)
                                  or clock_mhz <= 0):
        raise PredictError(f"{plat.id}: clock {clock_mhz!r} MHz is not a positive finite number")
    clock_hz = int(round(clock_mhz * 1e6)) if clock_mhz else plat.default_clock_hz
    if clock_hz <= 0 or clock_hz > plat.max_clock_hz:
        raise PredictError(f"{plat.id}: clock {clock_hz / 1e6:g} MHz is outside 0..{plat.max_clock_hz / 1e6:g} "
                           "MHz (see clocks.max_hz in its platform file)")
    return clock_hz


def _voltage(voltage_v: float | None) -> float | None:
    try:
        return check_voltage(voltage_v, "supply voltage")
    except VoltageError as exc:
        raise PredictError(str(exc)) from None


def predict_from_counts(plat: Platform, counts: TwinCounts, *, clock_mhz: float | None = None,
                        voltage_v: float | None = None, calibration=None,
                        mca: McaEstimate | str | None = None) -> dict:
    """The prediction for ``plat`` from counts already obtained (no emulator run); with ``mca`` (an
    estimate of calibration.mca, or why there is none) the result has an ``mca`` object too."""
    clock_hz = _clock(plat, clock_mhz)
    voltage_v = _voltage(voltage_v)
    cal = _resolve_calibration(calibration)
    proxy = counts.platform
    proxy_plat = get_platform(proxy)
    try:
        bm = board_model(plat, clock_hz, counts.fpu, cal, proxy_plat.core)
        msetup = memory_setup(plat, clock_hz)
        ws = msetup.wait_states
    except CycleModelError as exc:
        raise PredictError(str(exc)) from None
    same_isa = proxy_plat.isa == plat.isa          # the counts' fetch bytes and caches are of this code
    width = msetup.fetch_width if same_isa else None
    pre_icache, dec_icache = (counts.prefill_icache, counts.decode_icache) if same_isa else (None, None)
    pre_dcache, dec_dcache = (counts.prefill_dcache, counts.decode_dcache) if same_isa else (None, None)
    # the counts simulated this board's fetch path (twin.profile.fetch_path) at these wait states: its cycles
    # are the wait terms (as in a bench row's wait_cycles column, which a calibration of the board was fitted on)
    simulated = proxy == plat.id and counts.wait_cycles_ws is not None and counts.wait_cycles_ws == ws
    pre_wait = (counts.prefill_wait_cycles, counts.wait_cycles_loads) if simulated else None
    dec_wait = (counts.decode_wait_cycles, counts.wait_cycles_loads) if simulated else None
    prefill_cycles, prefill_factor, _ = _cycles(bm, msetup, width, counts.prefill, counts.prefill_loads_flash,
                                                counts.prefill_branches_taken, counts.prefill_fetch_bytes, pre_icache,
                                                pre_dcache, wait=pre_wait)
    token_cycles, token_factor, token_terms = _cycles(bm, msetup, width, counts.decode, counts.decode_loads_flash,
                                                      counts.decode_branches_taken, counts.decode_fetch_bytes,
                                                      dec_icache, dec_dcache, wait=dec_wait)
    by_function = None
    if counts.decode_functions:   # where the token's cycles go, by function (+ what no function gets)
        per_fn = {f: {**d, "same_isa": same_isa,
                      "wait": (d["wait_cycles"], counts.wait_cycles_loads) if simulated and "wait_cycles" in d else None}
                  for f, d in counts.decode_functions.items()}
        fns = _split_by_function(bm, msetup, width, per_fn, token_factor)
        rest = _unattributed(bm, msetup, width, counts.decode,
                             _flash_left(counts.decode_loads_flash, per_fn),
                             sum(d["branches_unresolved"] for d in per_fn.values()), token_factor,
                             _fills_left(msetup, counts.decode, counts.decode_fetch_bytes, dec_icache, per_fn),
                             _load_fills_left(msetup, dec_dcache, per_fn),
                             simulated_wait=dec_wait is not None and all(d["wait"] for d in per_fn.values()),
                             wait_loads=counts.wait_cycles_loads)
        by_function = {"functions": {f: d["cycles"] for f, d in fns.items()},
                       "unattributed": sum(rest.values())}
    token_s = token_cycles / clock_hz
    ttft_s = (prefill_cycles + token_cycles) / clock_hz
    notes = list(bm.notes)
    x = _features(msetup, width, counts.decode, loads_flash=counts.decode_loads_flash,    # a token's
                  branches_taken=counts.decode_branches_taken, fetch_bytes=counts.decode_fetch_bytes,
                  icache=dec_icache, dcache=dec_dcache, wait=dec_wait)
    if cal is not None:   # the calibration's interval for this token's terms (ConformalInterval)
        m = cal.cycles
        band = fetch_path.UNCERTAINTY if dec_wait is not None else None
        h = float(m.half_width(x, fetch_band=band)[0])
        bm = dataclasses.replace(bm, rel_low=h, rel_high=h)
        share, excess = float(m.scale(x)[0]), float(m.excess(x)[0])
        if m.q_scale == "core":
            notes.append(f"calibration interval ±{m.q:.1%} of the core's own cycles (instruction classes and "
                         f"taken branches: {share:.0%} of this token's; the rest are wait states): ±{m.q * share:.1%}")
        if excess > 0.005:
            notes.append(f"interval widened by ±{h - m.q * share:.1%}: {excess:.0%} of this token's predicted "
                         "cycles are in terms larger than in any calibrated row (e.g. fetch stalls at more wait "
                         f"states than the calibration saw), × band {m.extrapolation['band']:g}"
                         + (f" ({band:g} for the wait cycles of the twin's fetch-path model)" if band is not None else ""))
    if dec_wait is not None:
        notes.append(f"fetch and flash-load stalls from the twin's cycle model of the {plat.core} fetch path at "
                     f"{ws:g} wait states (twin.profile.fetch_path): {counts.decode_wait_cycles:,.0f} cycles per token"
                     + ("" if counts.wait_cycles_loads else "; flash loads' data waits added as flash loads × wait states"))
    if counts.decode_loads_flash is None:
        notes.append("memory traffic not counted: loads_flash = flash_load_fraction × loads (assumption)")
    else:
        notes.append("loads from flash counted by the profiler (code + model regions of the proxy)")
    if counts.decode_branches_taken is None:
        notes.append("taken branches not counted: taken_fraction × branches (assumption)")
    else:
        notes.append("taken branches counted by the profiler (exact from its edge counts; without them derived "
                     "from block counts, the unresolved rest × taken_fraction)")
    if msetup.icache is not None:
        sim = (dec_icache or {}).get(msetup.icache.key)
        if sim is not None:
            notes.append(f"fetch stalls from the twin's simulation of the {msetup.icache.key} instruction cache: "
                         f"{sim['misses']:,.0f} misses and {sim['prefetched']:,.0f} prefetched lines of "
                         f"{sim['lookups']:,.0f} lookups per token")
        else:
            notes.append(f"fetch stalls: the counts carry no simulation of the board's {msetup.icache.key} cache "
                         f"(another ISA, Renode or older counts): its assumed hit rate {msetup.fetch_hit:g}")
    if msetup.dcache is not None:
        dsim = (dec_dcache or {}).get(msetup.dcache.key)
        if dsim is not None:
            notes.append(f"flash-load stalls from the twin's simulation of the {msetup.dcache.key} data cache: "
                         f"{dsim['misses']:,.0f} misses of {dsim['lookups']:,.0f} flash loads per token")
        else:
            notes.append(f"flash-load stalls: the counts carry no simulation of the board's {msetup.dcache.key} "
                         f"data cache (no memory traffic counted, another ISA or Renode): its assumed hit rate "
                         f"{msetup.data_hit:g}")

    energy, e_lo, e_hi = None, 0.0, 0.0
    if bm.energy_coef is not None:
        energy = float(np.append(x, token_s) @ bm.energy_coef)
        e_lo = e_hi = float(bm.energy_q or 0.0)
        notes.append(f"energy from calibration {bm.source}")
    else:
        try:
            pm = power_model(plat)
            energy = pm.energy(token_s, clock_hz, voltage_v)
            e_lo, e_hi = pm.widen(bm.rel_low, bm.rel_high)
            notes.extend(pm.notes)
            if pm.widening:
                notes.append(f"energy interval widened to -{e_lo:.0%}/+{e_hi:.0%} (the time's "
                             f"-{bm.rel_low:.0%}/+{bm.rel_high:.0%} × the power figure's error: "
                             + "; ".join(pm.widening) + ")")
            if voltage_v is not None:
                notes.append(f"DVFS what-if at {voltage_v:g} V: dynamic power scaled by (V/V0)², "
                             f"V0 = {pm.voltage_v:g} V")
        except EnergyModelError as exc:
            notes.append(f"energy not predicted: {exc}")

    if bm.rel_low >= 1:
        notes.append(f"interval: relative error up to {bm.rel_low:.0%}, so the time's lower bound is 0 and "
                     "tokens/s has no upper bound (null); calibrate on more workloads to narrow it")
    m = counts.memory
    flash_need = int(m["flash_bytes"]) + int(m["model_image_bytes"])
    ram_need = int(m["ram_static_bytes"]) + int(m["arena_bytes"]) + int(m["stack_peak_bytes"])
    flash_avail, ram_avail = plat.code_bytes_available, plat.ram_bytes_available
    tps = 1.0 / token_s
    mode = plat.twin_mode
    return {
        "platform": plat.id,
        "model": counts.model,
        "clock_mhz": clock_hz / 1e6,
        "calibration": bm.source,
        # which cycle model the calibration cited above used (the residual's factor 1 + r per phase)
        "calibration_info": {"id": bm.source, "model": bm.kind, "residual": bm.residual is not None,
                             "distance": calibration_distance(cal, plat, clock_hz),
                             "residual_factor": ({"prefill": prefill_factor, "per_token": token_factor}
                                                 if bm.residual is not None else None)},
        "ttft_seconds": _interval(ttft_s, bm.rel_low, bm.rel_high),
        "token_seconds": _interval(token_s, bm.rel_low, bm.rel_high),
        # tokens/s is the reciprocal: its low bound comes from the slow end of the time interval
        # (no upper bound — null — when the interval's time reaches 0: a relative error of 100% or more)
        "tokens_per_second": {"value": tps, "low": 1.0 / (token_s * (1 + bm.rel_high)),
                              "high": 1.0 / (token_s * (1 - bm.rel_low)) if bm.rel_low < 1 else None},
        "energy_per_token_joules": _interval(energy, e_lo, e_hi),
        "fits": flash_need <= flash_avail and ram_need <= ram_avail,
        "memory": {"flash_bytes": flash_need, "ram_bytes": ram_need, "flash_available": flash_avail,
                   "ram_available": ram_avail},
        "twin": {"mode": mode.mode, "proxy": proxy, "confidence": mode.confidence,
                 "cross_core": mode.mode == "none", "kernels": counts.kernels},
        "cycles": {"prefill": prefill_cycles, "per_token": token_cycles,
                   "per_token_terms": token_terms, "wait_states": ws,
                   # per function (None: not counted); + "unattributed" (flash-load waits, unresolved
                   # branches' assumed share) = per_token
                   "per_token_by_function": by_function},
        "counts": {"platform": counts.platform, "build_id": counts.build_id,
                   "image_sha256": counts.image_sha256, "tokens": counts.tokens,
                   "matches_reference": counts.matches_reference},
        "voltage_v": voltage_v,
        "notes": notes,
        **({} if mca is None else
           {"mca": _mca_figure(mca, counts, memory_setup(plat, clock_hz), clock_hz, token_cycles)}),
    }


def _fills_left(mem: MemorySetup, by_class: Mapping[str, float], fetch_bytes: float | None,
                icache: Mapping | None, functions: dict[str, dict]) -> float | None:
    """The token's simulated waiting fetches no function was given (the prefetched lines' exposed part),
    None where the fetch model is not the simulation."""
    whole = mem.fetch_fills(icache, fetch_bytes=fetch_bytes, instructions=sum(by_class.values()))
    if whole is None:
        return None
    given = sum(mem.fetch_fills(_function_cache(d), fetch_bytes=d["fetch_bytes"], instructions=d["instructions"]) or 0.0
                for d in functions.values())
    return max(whole - given, 0.0)


def _load_fills_left(mem: MemorySetup, dcache: Mapping | None, functions: dict[str, dict]) -> float | None:
    """The token's simulated data-cache fills no function was given (misses outside every function's
    counted sites), None where the flash-load model is not the simulation."""
    whole = mem.load_fills(dcache)
    if whole is None:
        return None
    given = sum(mem.load_fills(_function_cache(d, "dcache_misses")) or 0.0 for d in functions.values())
    return max(whole - given, 0.0)


def _unattributed(bm: BoardModel, mem: MemorySetup, width: float | None, by_class: dict[str, float],
                  loads_flash: float | None, unresolved: float, residual_factor: float = 1.0,
                  fills_left: float | None = None, load_fills_left: float | None = None,
                  simulated_wait: bool = False, wait_loads: bool = True) -> dict[str, float]:
    """The terms of a token no function can be given: the flash-load wait states of ``loads_flash``
    (the loads not counted per function: ``_flash_left``; None, an assumed share of the loads), the
    unresolved conditional branches' assumed taken share (its refill and, with a fetch width and no
    simulated cache, its refetch) and, with a simulated cache, the waits of its prefetched lines
    (``fills_left``). With ``simulated_wait`` (the functions carry the simulated wait cycles, which sum to
    the token's) no fetch wait is left, nor a flash-load wait where they include the loads' (``wait_loads``)."""
    rest = np.zeros(len(FEATURES))
    guessed = measured_taken(0.0, unresolved)
    ws = mem.wait_states
    rest[FEATURES.index("branches_taken")] = guessed
    if fills_left is not None:
        rest[FEATURES.index("fetch_wait")] = fills_left * ws
    else:
        rest[FEATURES.index("fetch_wait")] = guessed * ws * mem.fetch_miss if width else 0.0
    rest[FEATURES.index("flash_load_wait")] = (load_fills_left * ws if load_fills_left is not None else feature_vector(
        by_class, wait_states=ws, loads_flash=loads_flash, load_miss=mem.load_miss)[FEATURES.index("flash_load_wait")])
    if simulated_wait:
        rest[FEATURES.index("fetch_wait")] = 0.0
        if wait_loads:
            rest[FEATURES.index("flash_load_wait")] = 0.0
    terms = {f: float(v) * bm.factor * residual_factor for f, v in zip(FEATURES, rest * bm.coef, strict=True)}
    if bm.extra_per_fp:
        terms["soft_float_calls"] = 0.0     # every float instruction is some function's
    return terms


def function_cycles(platform: Platform | str, decode: SegmentProfile | Sequence[SegmentProfile], *,
                    ran_on: str | None = None, clock_mhz: float | None = None, wait: dict | None = None) -> dict:
    """The prior's cycles of one decoded token per function, each split by term, and what no function
    can be given.

    ``decode``: the profile of one decoded token, or one per token (their mean is taken), as
    ``twin.profile.counts.analyze`` cuts a run on ``ran_on`` (default: the board's twin,
    ``counts_platform``). The cycle model is the one ``predict_from_counts`` uses without a calibration
    (``board_model``: ``prior_coefficients`` of the board's core at its clock's wait states and hit rates,
    or of the proxy's core × the cross-core factor, plus the soft-float calls of a board without an FPU),
    applied to each function's ``feature_vector``: its instructions by class, its taken branches and,
    where the core's fetch width is known, its instruction bytes. Both factors are linear, so they are
    applied per function as to the whole; the prior has no residual.

    Not attributed to a function (``unattributed``): the flash-load wait states of loads not counted
    per function (a profile without the plugin's per-instruction memory counts, ``mem_by_function``;
    with them each function carries its own) and the part of the taken-branch and fetch
    terms that comes from the conditional branches whose taken / not-taken split was not resolved
    (``taken_fraction`` × their executions, the model's assumption for the whole token; where they ran
    is in ``branches_unresolved_by_function``). Σ ``functions[f]["cycles"]`` + ``unattributed["cycles"]``
    == ``per_token``, which is ``predict_from_counts(...)["cycles"]["per_token"]`` for the same counts, and
    likewise term by term with ``per_token_terms`` (to float rounding). ``wait``: the run report's
    ``instructions.by_phase_wait_cycles`` of the same run (the twin's simulation of the fetch path,
    twin.profile.fetch_path), used as predict_from_counts uses it."""
    plat = get_platform(platform) if isinstance(platform, str) else platform
    profiles = [decode] if isinstance(decode, SegmentProfile) else list(decode)
    if not profiles:
        raise PredictError("function_cycles needs the profile of at least one decoded token")
    ran_id = ran_on or plat.counts_platform
    if ran_id is None:
        raise PredictError(f"{plat.id} has no twin mapping (twin.proxy): say which platform ran (ran_on=)")
    ran = get_platform(ran_id)
    n = len(profiles)
    tot = sum_profiles(profiles)
    if tot.total and not tot.by_function_class:
        raise PredictError("the profile has no instructions by function and class (a Renode profile, or one "
                           "from an older twin.profile.counts): cannot split cycles per function")
    clock_hz = _clock(plat, clock_mhz)
    try:
        bm = board_model(plat, clock_hz, ran.fpu, None, ran.core)
        msetup = memory_setup(plat, clock_hz)
    except CycleModelError as exc:
        raise PredictError(str(exc)) from None
    ws = msetup.wait_states
    same_isa = ran.isa == plat.isa                                  # as in predict_from_counts
    width = msetup.fetch_width if same_isa else None
    loads_flash = None if tot.mem is None else float(sum(tot.mem.get(r, {}).get("loads", 0)
                                                         for r in FLASH_REGIONS))
    taken = measured_taken(tot.branches_taken, tot.branches_unresolved)
    mix = {c: v / n for c, v in tot.by_class.items()}
    icache = {k: {s: v / n for s, v in d.items()} for k, d in tot.icache.items()} if same_isa else None
    dcache = {k: {s: v / n for s, v in d.items()} for k, d in tot.dcache.items()} if same_isa else None
    simulated = wait is not None and ran.id == plat.id and float(wait["wait_states"]) == ws
    dec_wait = (wait["decode"] / n, bool(wait["flash_loads"])) if simulated else None
    per_token, _, per_token_terms = _cycles(bm, msetup, width, mix, None if loads_flash is None else loads_flash / n,
                                            taken / n, tot.fetch_bytes / n, icache, dcache, wait=dec_wait)

    per_fn = {f: {**d, "same_isa": same_isa,
                  "wait": (wait["decode_by_function"].get(f, 0.0) / n, dec_wait[1]) if simulated else None}
              for f, d in (_per_token_functions(function_table(tot), n) or {}).items()}
    functions = _split_by_function(bm, msetup, width, per_fn)
    rest_terms = _unattributed(bm, msetup, width, mix,
                               _flash_left(None if loads_flash is None else loads_flash / n, per_fn),
                               tot.branches_unresolved / n, 1.0,
                               _fills_left(msetup, mix, tot.fetch_bytes / n, icache, per_fn),
                               _load_fills_left(msetup, dcache, per_fn),
                               simulated_wait=simulated, wait_loads=True if dec_wait is None else dec_wait[1])
    notes = [*bm.notes,
             "per function: the prior applied to each function's instructions by class, taken branches and "
             "instruction bytes; cross-core factor and soft-float calls as for the whole token; no residual",
             "not attributed to a function: "
             + ("" if tot.mem_by_function is not None else
                "flash-load wait states (no per-function memory counts in this profile) and ")
             + f"taken_fraction × the {tot.branches_unresolved / n:,.0f} unresolved conditional "
             "branches per token (their split is an assumption)"]
    if loads_flash is None:
        notes.append("memory traffic not counted: loads_flash = flash_load_fraction × loads (assumption)")
    return {
        "platform": plat.id, "ran_on": ran.id, "clock_mhz": clock_hz / 1e6, "wait_states": ws, "tokens": n,
        "per_token": per_token, "per_token_terms": per_token_terms,
        "functions": functions,
        "unattributed": {"cycles": sum(rest_terms.values()), "terms": rest_terms,
                         "loads_flash": None if loads_flash is None else loads_flash / n,
                         "branches_unresolved": tot.branches_unresolved / n,
                         "branches_unresolved_by_function": {f: v / n for f, v in
                                                             tot.branches_unresolved_by_function.items()}},
        "factors": {"cross_core": bm.factor, "soft_float_cycles_per_fp": bm.extra_per_fp, "residual": None},
        "notes": notes,
    }


def _mca_figure(est: McaEstimate | str, counts: TwinCounts, mem, clock_hz: int, token_main: float) -> dict:
    """The ``mca`` object: llvm-mca's cycles per phase plus the board's flash wait-state terms (the
    ones calibration.cycles uses), next to the main figure they can be compared with."""
    from .mca import wait_state_cycles

    if isinstance(est, str):       # the same keys, null
        keys = ("prefill_cycles", "token_cycles", "ttft_seconds", "token_seconds", "tokens_per_second",
                "ratio_to_main", "wait_cycles", "mcpu", "triple", "llvm_model", "platform", "blocks",
                "unparsed_instructions", "unparsed_executed", "unparsed_fraction")
        return {"available": False, "reason": est, **dict.fromkeys(keys), "notes": [est]}
    wait_pre = wait_state_cycles(counts.prefill, mem, loads_flash=counts.prefill_loads_flash)
    wait_tok = wait_state_cycles(counts.decode, mem, loads_flash=counts.decode_loads_flash)
    prefill = est.prefill_cycles + wait_pre
    token = est.token_cycles + wait_tok
    notes = [f"llvm-mca -mtriple={est.triple} -mcpu={est.mcpu} ({est.model}) on the {est.blocks} blocks "
             f"{est.platform} executed: steady-state cycles per block × executions",
             f"{est.unparsed_executed} of {est.executed} executed instructions "
             f"({est.unparsed_fraction:.2%}; {est.unparsed_instructions} distinct) llvm-mca could not take: "
             "charged at the class prior's cost",
             f"flash wait states {mem.wait_states:g}: + {wait_tok:.4g} cycles per token (the class prior's "
             "fetch and flash-load terms; llvm-mca has no memory model)",
             "not modelled: taken-branch refills and branch prediction, caches, interactions between blocks"]
    return {"available": True, "reason": None, "prefill_cycles": prefill, "token_cycles": token,
            "ttft_seconds": (prefill + token) / clock_hz, "token_seconds": token / clock_hz,
            "tokens_per_second": clock_hz / token,
            "ratio_to_main": token / token_main if token_main else None,
            "wait_cycles": {"prefill": wait_pre, "per_token": wait_tok},
            "mcpu": est.mcpu, "triple": est.triple, "llvm_model": est.model, "platform": est.platform,
            "blocks": est.blocks, "unparsed_instructions": est.unparsed_instructions,
            "unparsed_executed": est.unparsed_executed, "unparsed_fraction": est.unparsed_fraction,
            "notes": notes}


def compare(platforms: list[str], **kw) -> list[dict]:
    """``predict`` for each board; boards sharing a proxy share one emulator run."""
    return [predict(p, **kw) for p in platforms]


def chart(results: list[dict], out: Path | str) -> Path:
    """Latency, tokens/s, energy/token and memory headroom side by side (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["platform"] for r in results]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(17, 0.45 * len(names) + 2.2), sharey=True)

    def bars(ax, key: str, scale: float, title: str, log: bool = True):
        vals = [r[key]["value"] for r in results]
        v = np.array([np.nan if x is None else x * scale for x in vals])
        lo = np.array([np.nan if r[key]["low"] is None else r[key]["low"] * scale for r in results])
        hi = np.array([np.nan if r[key]["high"] is None else r[key]["high"] * scale for r in results])
        colors = ["#c44" if r["twin"]["confidence"] == "low" else
                  "#d90" if r["twin"]["confidence"] == "medium" else "#37a" for r in results]
        ax.barh(y, np.nan_to_num(v), color=colors)
        err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        ax.errorbar(np.nan_to_num(v), y, xerr=err, fmt="none", ecolor="k", capsize=2, lw=0.8)
        for i, val in enumerate(v):
            if np.isnan(val):
                ax.text(0.02, i, "n/a (no power figure)", va="center", fontsize=7,
                        transform=ax.get_yaxis_transform())
        ax.set_title(title, fontsize=9)
        if log and np.nanmax(np.nan_to_num(v, nan=0)) > 0:
            ax.set_xscale("log")

    bars(axes[0], "token_seconds", 1e3, "latency per token [ms]")
    bars(axes[1], "tokens_per_second", 1.0, "tokens/s")
    bars(axes[2], "energy_per_token_joules", 1e3, "energy per token [mJ]", log=False)
    ax = axes[3]
    flash = [100 * r["memory"]["flash_bytes"] / r["memory"]["flash_available"] for r in results]
    ram = [100 * r["memory"]["ram_bytes"] / r["memory"]["ram_available"] for r in results]
    ax.barh(y - 0.2, flash, height=0.4, label="flash used %", color="#59a")
    ax.barh(y + 0.2, ram, height=0.4, label="RAM used %", color="#a5c")
    ax.axvline(100, color="k", lw=0.8)
    for i, r in enumerate(results):
        ax.text(max(flash[i], ram[i]) + 2, i, "fits" if r["fits"] else "DOES NOT FIT", va="center", fontsize=7)
    ax.set_title("memory use (100% = full)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    axes[0].set_yticks(y, [f"{n}\n{r['twin']['mode']}/{r['twin']['confidence']}" for n, r in
                           zip(names, results, strict=True)], fontsize=7)
    axes[0].invert_yaxis()
    model = results[0]["model"] if results else ""
    fig.suptitle(f"{model}: predicted per board (bars: blue high, orange medium, red low confidence; "
                 f"calibration: {', '.join(sorted({r['calibration'] for r in results}))})", fontsize=9)
    fig.tight_layout()
    from twin.atomic import atomic_path

    out = Path(out)
    try:
        with atomic_path(out) as tmp:       # whole or not at all: the previous chart survives a full disk
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return out
