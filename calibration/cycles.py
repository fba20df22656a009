"""From counts to cycles: a linear cycle model for in-order MCU cores.

Features (``FEATURES``, one value per workload × phase)::

    n_<class>        instructions of each class of twin.profile.isa.CLASSES
    branches_taken   taken branches counted by the twin (twin/profile/counts.py: derived from block counts
                     or exact edge counts; unresolved conditional ones × taken_fraction, see
                     measured_taken); when a row has none, taken_fraction × n_branch
    fetch_wait       instruction fetches that wait on flash × effective flash wait states. Where the
                     twin simulated the board's instruction cache (its geometry in the platform file:
                     twin.profile.counts.catalog_caches), the waiting fetches are its line fills: misses,
                     plus the part of each prefetched line's fill its execution does not hide
                     (``MemorySetup.fetch_fills``), × the memory accesses per line. Else they are fetches × the
                     miss fraction (1 - hit rate) of the board's fetch accelerator (an assumption per
                     kind, cores.yaml memory.fetch_hit): where the core's fetch width is known
                     (cores.yaml fetch_width_bytes) and the twin counted the executed instruction
                     bytes, fetches = fetch_bytes / width + taken branches (each transfer refetches);
                     else one fetch per instruction. On a core whose fetch path the twin simulates
                     (Ibex, CV32E40P without cache: twin.profile.fetch_path), the cycles the wait
                     states add as simulated, fetch and flash-load waits together
    flash_load_wait  flash loads that wait × effective flash wait states (model weights read from
                     flash): with the twin's simulation of the board's data cache (memory-traffic
                     counts), its misses × the accesses per line (``MemorySetup.load_fills``); else
                     loads_flash × the data path's assumed miss fraction (cores.yaml memory.data_hit)

    cycles = coef · features

The prior coefficients come from published per-class timings (``calibration/cores.yaml``, every
figure with its source); the two wait terms' are 1 (their features already count only the accesses
that wait).  A bench calibration
(``calibration.estimators``) fits the same coefficients, non-negative, from measured cycles.

Assumptions, stated: when memory traffic was not counted, ``loads_flash`` is
``flash_load_fraction × n_load`` (model weights live in flash); multi-register loads/stores are
charged as one instruction of their class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from twin.platforms import Platform, get_platform
from twin.profile.counts import DATA_CACHE_KINDS, INSTRUCTION_CACHE_KINDS, own_cache
from twin.profile.isa import CLASSES

CORES_FILE = Path(__file__).resolve().parent / "cores.yaml"

CLASS_FEATURES: tuple[str, ...] = tuple(f"n_{c}" for c in CLASSES)
# The profiler's memory regions (twin.runner.memory_regions) whose loads are loads_flash.
FLASH_REGIONS: tuple[str, ...] = ("code", "model")
FEATURES: tuple[str, ...] = (*CLASS_FEATURES, "branches_taken", "fetch_wait", "flash_load_wait")
# The wait-state terms: the memory's cycles, not the core's (core_share).
MEMORY_FEATURES: tuple[str, ...] = ("fetch_wait", "flash_load_wait")
MEMORY_COLUMNS: list[int] = [FEATURES.index(f) for f in MEMORY_FEATURES]


class CycleModelError(ValueError):
    """A core, board or count set the cycle model cannot use; the message says what to do."""


@dataclass(frozen=True)
class Figure:
    value: float | None
    source: str


@dataclass(frozen=True)
class CorePrior:
    """Published per-class timings of one core (cycles at zero wait states) and their sources."""
    core: str
    class_cycles: dict[str, Figure] | None = field(hash=False)
    taken_branch_penalty: Figure | None = None
    coremark_per_mhz: Figure | None = None
    fetch_width_bytes: Figure | None = None    # bytes one instruction fetch reads (None: one per instruction)
    issue_width: Figure | None = None          # instructions retired per cycle at most (None: not given)

    @property
    def has_timings(self) -> bool:
        return self.class_cycles is not None


@dataclass(frozen=True)
class SimulatedCache:
    """A board's cache as the twin simulates it: its key in the counts (CacheGeometry.key), its line and
    the memory accesses one line fill takes (line bytes / bytes per access)."""
    key: str
    line_bytes: int
    beats: int


@dataclass(frozen=True)
class MemorySetup:
    """How one board at one clock feeds the core: effective wait states and hit rates."""
    wait_states: float
    fetch_hit: float
    data_hit: float
    notes: tuple[str, ...] = ()
    fetch_width: float | None = None     # the core's fetch width in bytes (fetch_wait's unit), None: unknown
    icache: SimulatedCache | None = None   # the simulated instruction cache, None: none has a geometry
    dcache: SimulatedCache | None = None   # the simulated data cache of the flash loads, likewise

    @property
    def load_miss(self) -> float:
        """The assumed share of flash loads that wait, where the counts carry no simulation of the cache."""
        return 1.0 - self.data_hit

    def load_fills(self, dcache: Mapping[str, Mapping[str, float]] | None) -> float | None:
        """Memory accesses of the flash loads that wait, from counts that simulated this board's data
        cache (``dcache``: SegmentProfile.dcache or a per-token copy): its misses × accesses per line;
        else None."""
        if self.dcache is None or not dcache or self.dcache.key not in dcache:
            return None
        return float(dcache[self.dcache.key]["misses"]) * self.dcache.beats

    @property
    def fetch_miss(self) -> float:
        """The assumed share of fetches that wait, where the counts carry no simulation of the cache."""
        return 1.0 - self.fetch_hit

    def fetch_fills(self, icache: Mapping[str, Mapping[str, float]] | None, *, fetch_bytes: float | None,
              instructions: float) -> float | None:
        """Memory accesses of the instruction fetches that wait, from counts that simulated this
        board's cache (``icache``: SegmentProfile.icache or a per-token copy), else None.

        A miss waits for its whole fill; a line the next-line prefetcher fetched waits for the part
        of its fill the previous line's execution did not hide: 1 - (instructions per line, at one
        cycle each) / (accesses × (wait states + 1)), at least 0 (the instructions per line from the
        counts' mean instruction size; one cycle each is the core's best, so the stall is the most
        the prior charges)."""
        if self.icache is None or not icache or self.icache.key not in icache:
            return None
        s = icache[self.icache.key]
        per_line = self.icache.line_bytes / (float(fetch_bytes) / instructions) \
            if fetch_bytes and instructions else 1.0
        exposed = max(0.0, 1.0 - per_line / (self.icache.beats * (self.wait_states + 1.0)))
        return (float(s["misses"]) + exposed * float(s["prefetched"])) * self.icache.beats


@dataclass(frozen=True)
class Tables:
    cores: dict[str, CorePrior] = field(hash=False)
    memory: dict = field(hash=False)
    cross_core: dict = field(hash=False)

    def figure(self, section: str, key: str) -> Figure:
        d = (self.memory if section == "memory" else self.cross_core)[key]
        return Figure(d["value"], d["source"])


def _figure(d: object, where: str) -> Figure:
    if not isinstance(d, dict) or "value" not in d or not isinstance(d.get("source"), str):
        raise CycleModelError(f"{where}: expected {{value: number, source: text}}, got {d!r}")
    v = d["value"]
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
        raise CycleModelError(f"{where}: value must be a number >= 0 or null, got {v!r}")
    return Figure(None if v is None else float(v), d["source"])


@cache
def load_tables(path: Path = CORES_FILE) -> Tables:
    """Read and check ``cores.yaml``: every figure has a value (or null) and a source."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "cores" not in data:
        raise CycleModelError(f"{path}: expected a mapping with 'cores'")
    cores: dict[str, CorePrior] = {}
    for name, c in data["cores"].items():
        where = f"{path}: cores.{name}"
        cc = c.get("class_cycles")
        table = None
        if cc is not None:
            missing = [k for k in CLASSES if k not in cc]
            if missing:
                raise CycleModelError(f"{where}.class_cycles: missing classes {missing}")
            table = {k: _figure(cc[k], f"{where}.class_cycles.{k}") for k in CLASSES}
            if any(f.value is None for f in table.values()):
                raise CycleModelError(f"{where}.class_cycles: every class needs a value")
        cores[name] = CorePrior(
            core=name, class_cycles=table,
            taken_branch_penalty=_figure(c["taken_branch_penalty"], f"{where}.taken_branch_penalty")
            if "taken_branch_penalty" in c else None,
            coremark_per_mhz=_figure(c["coremark_per_mhz"], f"{where}.coremark_per_mhz")
            if "coremark_per_mhz" in c else None,
            fetch_width_bytes=_figure(c["fetch_width_bytes"], f"{where}.fetch_width_bytes")
            if "fetch_width_bytes" in c else None,
            issue_width=_figure(c["issue_width"], f"{where}.issue_width") if "issue_width" in c else None,
        )
    memory = data.get("memory", {})
    for key in ("xip_miss_cycles", "taken_fraction", "flash_load_fraction"):
        _figure(memory.get(key), f"{path}: memory.{key}")
    for kind in ("fetch_hit", "data_hit"):
        for acc, d in memory.get(kind, {}).items():
            _figure(d, f"{path}: memory.{kind}.{acc}")
    return Tables(cores, memory, data.get("cross_core", {}))


def core_prior(core: str) -> CorePrior:
    cores = load_tables().cores
    if core not in cores:
        raise CycleModelError(f"no timing table for core {core!r} in {CORES_FILE.name}; "
                              f"known cores: {', '.join(cores)}")
    return cores[core]


# ---------------------------------------------------------------------------------------------
# Memory set-up of a board at a clock
# ---------------------------------------------------------------------------------------------
def _hit(kind: str, platform: Platform, table: Mapping[str, dict]) -> tuple[float, str]:
    """The hit rate of the best accelerator of the platform that serves ``kind`` of access."""
    order = {"fetch_hit": ("icache", "xip-cache", "art", "cache"),
             "data_hit": ("dcache", "xip-cache", "art", "cache")}[kind]
    present = {a.kind for a in platform.accelerators}
    for acc in order:
        if acc in present and acc in table:
            return float(table[acc]["value"]), f"{kind} {table[acc]['value']} ({acc}: {table[acc]['source']})"
    return float(table["none"]["value"]), f"{kind} {table['none']['value']} (no accelerator)"


def memory_setup(platform: Platform, clock_hz: int | None = None) -> MemorySetup:
    """Effective wait states and hit rates for ``platform`` at ``clock_hz`` (default: its default)."""
    tables = load_tables()
    clock = clock_hz or platform.default_clock_hz
    if clock > platform.max_clock_hz:
        raise CycleModelError(f"{platform.id}: clock {clock / 1e6:g} MHz exceeds its maximum "
                              f"{platform.max_clock_hz / 1e6:g} MHz")
    ft = platform.flash_timing
    notes: list[str] = []
    if ft is None or ft.kind == "ram":
        ws = 0.0
    elif ft.kind == "xip":
        miss = tables.figure("memory", "xip_miss_cycles")
        ws = float(miss.value or 0.0)
        notes.append(f"external flash: a miss costs {ws:g} cycles ({miss.source})")
    else:
        w = ft.wait_states(clock)
        if w is None:
            ws = 0.0
            notes.append(f"flash wait states nf for {platform.id}: 0 assumed ({ft.source})")
        else:
            ws = float(w)
            if clock < ft.table[0][0] or len(ft.table) == 1:
                notes.append(f"{w} wait states from the table row at {ft.table[0][0] / 1e6:g} MHz")
    fetch_hit, n1 = _hit("fetch_hit", platform, tables.memory["fetch_hit"])
    data_hit, n2 = _hit("data_hit", platform, tables.memory["data_hit"])
    prior = tables.cores.get(platform.core)
    width = prior.fetch_width_bytes.value if prior and prior.fetch_width_bytes else None
    icache, dcache = simulated_cache(platform), simulated_cache(platform, DATA_CACHE_KINDS)
    if icache is not None:
        n1 = (f"instruction fetch: the {icache.key} cache as the twin simulates it (line fills of "
              f"{icache.beats} access{'es' if icache.beats > 1 else ''}) where the counts carry that; else {n1}")
    if dcache is not None:
        n2 = (f"flash loads: the {dcache.key} data cache as the twin simulates it (memory-traffic counts); "
              f"else {n2}")
    return MemorySetup(ws, fetch_hit, data_hit, (*notes, n1, n2), width, icache, dcache)


def simulated_cache(platform: Platform, kinds: tuple[str, ...] = INSTRUCTION_CACHE_KINDS) -> SimulatedCache | None:
    """The accelerator of ``platform`` the twin simulates as its instruction cache (or, with
    DATA_CACHE_KINDS, its data cache): the first with size, line and ways (twin.profile.counts.own_cache),
    None when it has none. A line fill takes line bytes / ``bus_bytes`` memory accesses (one when the
    platform file gives no bus width: a flash as wide as the line)."""
    own = own_cache(platform.accelerators, kinds=kinds)
    if own is None:
        return None
    g, acc = own
    bus = acc.bus_bytes or g.line_bytes
    return SimulatedCache(g.key, g.line_bytes, max(1, g.line_bytes // bus))


def wait_states_for(board: str, clock_hz: float) -> float:
    """Effective flash wait states of a catalog board at a clock (for dataset rows)."""
    return memory_setup(get_platform(board), int(clock_hz)).wait_states


def fetch_width_for(board: str) -> float | None:
    """The fetch width (bytes) of a catalog board's core, None when cores.yaml does not give one."""
    return memory_setup(get_platform(board)).fetch_width


# ---------------------------------------------------------------------------------------------
# Prior coefficients and features
# ---------------------------------------------------------------------------------------------
def prior_coefficients(core: str) -> np.ndarray:
    """The prior cost of each feature of ``FEATURES`` for ``core`` (the wait terms' are 1: their features count
    the accesses that wait, with the board's caches)."""
    prior = core_prior(core)
    if not prior.has_timings:
        raise CycleModelError(f"core {core!r} has no published instruction timings: it is predicted "
                              "across cores (twin mode 'none')")
    assert prior.class_cycles is not None
    costs = [prior.class_cycles[c].value for c in CLASSES]
    taken = prior.taken_branch_penalty.value if prior.taken_branch_penalty else 0.0
    return np.array([*costs, taken, 1.0, 1.0], dtype=float)


def coefficients_dict(coef: np.ndarray) -> dict[str, float]:
    return {f: float(c) for f, c in zip(FEATURES, coef, strict=True)}


def measured_taken(taken: float, unresolved: float = 0.0, taken_fraction: float | None = None) -> float:
    """Taken branches from the profiler's counts: the counted ones plus ``taken_fraction`` of the
    conditional branches whose split could not be derived (the only place the assumption remains)."""
    tf = taken_fraction if taken_fraction is not None else load_tables().figure("memory", "taken_fraction").value
    return float(taken) + float(tf or 0.0) * float(unresolved)


def feature_vector(by_class: Mapping[str, float], *, wait_states: float,
                   loads_flash: float | None = None, branches_taken: float | None = None,
                   taken_fraction: float | None = None, flash_load_fraction: float | None = None,
                   fetch_bytes: float | None = None, fetch_width: float | None = None,
                   fetch_miss: float = 1.0, fetch_fills: float | None = None, load_miss: float = 1.0,
                   load_fills: float | None = None, wait_cycles: float | None = None,
                   wait_cycles_loads: bool = True) -> np.ndarray:
    """The ``FEATURES`` vector of one count set (a phase's instructions by class). ``fetch_fills``:
    the waiting fetches of a simulated cache (MemorySetup.fetch_fills), else fetches × ``fetch_miss``;
    likewise ``load_fills`` (MemorySetup.load_fills), else flash loads × ``load_miss``.
    ``wait_cycles``: the cycles the wait states add as the twin simulated the core's fetch path
    (twin.profile.fetch_path: what a prefetch buffer hides behind multi-cycle instructions, what a
    refill behind the fetches on the bus costs); then fetch_wait is those cycles, and flash_load_wait
    0 when they include the flash loads' data waits (``wait_cycles_loads``)."""
    tables = load_tables()
    tf = taken_fraction if taken_fraction is not None else tables.figure("memory", "taken_fraction").value
    ff = (flash_load_fraction if flash_load_fraction is not None
          else tables.figure("memory", "flash_load_fraction").value)
    counts = [float(by_class.get(c, 0)) for c in CLASSES]
    n_total = sum(counts)
    if branches_taken is None or (isinstance(branches_taken, float) and math.isnan(branches_taken)):
        branches_taken = tf * float(by_class.get("branch", 0))
    if loads_flash is None or (isinstance(loads_flash, float) and math.isnan(loads_flash)):
        loads_flash = ff * float(by_class.get("load", 0))
    fetches = n_total
    if fetch_width and fetch_bytes is not None and not (isinstance(fetch_bytes, float) and math.isnan(fetch_bytes)):
        fetches = float(fetch_bytes) / fetch_width + float(branches_taken)
    waiting = fetches * fetch_miss if fetch_fills is None else float(fetch_fills)
    loads_waiting = loads_flash * load_miss if load_fills is None else float(load_fills)
    if wait_cycles is not None and not (isinstance(wait_cycles, float) and math.isnan(wait_cycles)):
        return np.array([*counts, branches_taken, float(wait_cycles),
                         0.0 if wait_cycles_loads else loads_waiting * wait_states])
    return np.array([*counts, branches_taken, waiting * wait_states, loads_waiting * wait_states])


def predict_cycles(coef: np.ndarray, features: np.ndarray) -> np.ndarray | float:
    """cycles = features · coef (rows of a 2-D array, or one vector)."""
    return features @ coef


def cross_core_factor(proxy_core: str, target_core: str) -> tuple[float, str]:
    """CoreMark/MHz ratio proxy/target: how many more cycles the target needs for the same C code."""
    p, t = core_prior(proxy_core).coremark_per_mhz, core_prior(target_core).coremark_per_mhz
    if p is None or t is None or p.value is None or t.value is None:
        raise CycleModelError(f"no CoreMark/MHz for {proxy_core} or {target_core}: cannot map across cores")
    return p.value / t.value, (f"CoreMark/MHz {proxy_core} {p.value:g} ({p.source}) / {target_core} "
                               f"{t.value:g} ({t.source})")


def intensities(X) -> np.ndarray:
    """Per row, each feature per executed instruction (x_j / the row's instructions, the class columns'
    sum): what a calibration's support is measured in (a term's cost per instruction)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    n = X[:, : len(CLASS_FEATURES)].sum(axis=1, keepdims=True)
    return X / np.maximum(n, 1e-12)


def core_share(X, coef) -> np.ndarray:
    """Per row, the share of its linear prediction X · coef in the core's own terms (the instruction
    classes and taken branches), not the memory wait terms (MEMORY_FEATURES): what a calibration's
    error is measured against (``ConformalInterval(scaled=True)``). A calibration fitted where wait
    states dominate has its error in the rest; on a board with fewer, that rest is more of the cycles.
    1 for every row when X has no memory columns."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    coef = np.asarray(coef, dtype=float)
    if X.shape[1] < len(FEATURES):
        return np.ones(len(X))
    total = X @ coef
    mem = X[:, MEMORY_COLUMNS] @ coef[MEMORY_COLUMNS]
    share = np.where(total > 0, 1.0 - mem / np.maximum(total, 1e-12), 1.0)
    return np.clip(share, 1e-3, 1.0)


def extrapolation(X, coef, support, bands=None) -> np.ndarray:
    """Per row, the share of its linear prediction X · coef beyond what the fit saw: for each feature
    the part of x_j above support_j × the row's instructions (``support``: the largest x_j per
    instruction over the fitted rows, 0 for a feature they never had, whose cost is then the prior's,
    unmeasured), weighted by its cost. ``bands`` (one per feature): each feature's part × its band
    instead, the relative uncertainty of what lies beyond (calibration.store.FittedModel.half_width)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    n = X[:, : len(CLASS_FEATURES)].sum(axis=1, keepdims=True)
    beyond = np.clip(X - np.asarray(support, dtype=float) * n, 0.0, None)
    coef = np.asarray(coef, dtype=float)
    weighted = coef if bands is None else coef * np.asarray(bands, dtype=float)
    return (beyond @ weighted) / np.maximum(X @ coef, 1e-12)
