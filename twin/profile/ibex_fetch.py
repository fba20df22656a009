"""The cycles wait states add on an Ibex without instruction cache: a cycle model of its fetch path.

Why the additive prior (every fetch waits ``wait_states`` cycles) over-predicts Ibex: its prefetch
buffer keeps fetching while the ID/EX stage is busy with a multi-cycle instruction, so part of each
fetch's latency is hidden; and a taken branch waits for the sequential fetches already on the bus,
so a refill costs more than one fetch. What the model follows, from the RTL of pythondata-cpu-ibex
and our SoC:

* rtl/soc/twin_soc.sv ``twin_port``: one port for instructions, another for data; a request is granted
  only when the port is idle or answering (``gnt_o = req_i && (!busy_q || answering)``), its answer
  comes 1 + wait cycles after the grant: one word per 1 + w cycles, back to back.
* ibex_prefetch_buffer.sv: up to NUM_REQS = 2 requests outstanding, a new one whenever the FIFO has
  room counting the outstanding ones (``fifo_ready``, ``valid_new_req``); an ungranted request holds
  its address until granted (``valid_req_q`` / ``stored_addr_q``), also across a branch, which only
  marks it and the outstanding ones for discard (``discard_req_q``, ``branch_discard_q``); the branch
  target is requested after them.
* ibex_fetch_fifo.sv: DEPTH = NUM_REQS + 1 = 3 words with a bypass (an answer can be decoded in the
  cycle it arrives); cleared by a branch; an unaligned 32-bit instruction needs two words.
* ibex_if_stage.sv: the IF/ID register takes the FIFO's output when ID/EX is ready; the
  instruction is in ID/EX the cycle after.
* doc/03_reference/pipeline_details.rst: ID/EX occupancy 1 + stall cycles: load/store 1 + the data
  port's answer (2 at zero wait states, + w on a load from the code/model windows: the data port is
  separate, so fetch goes on meanwhile), MUL 3, MULH* 4 (fast multiplier), DIV/REM 38; a jump asserts
  the new PC in its first cycle, a taken branch in its second (no branch-target ALU); a not-taken
  branch 1.

The dynamic instruction stream is not recorded, so it is generated from what the twin counts: a
random walk over the segment's translated blocks with the plugin's block-to-block transition counts
(``Dump.edges``: exact taken / not-taken), each block's instructions from the ELF, and each load read
from the code/model windows with the share the plugin's per-instruction memory counts give
(``Dump.mem_sites``; without them no load waits and the caller keeps its flash-load term). The
result is the cycles of the walk at w wait states minus at 0, scaled to the segment's instructions:
what the prior adds to its zero-wait-state class costs in place of fetches × w (+ flash loads × w).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twin.profile import isa
from twin.profile.counts import _COND, _TAKEN_KINDS, Dump, _function_table, branch_kind

CORE = "ibex"
SEQ, TAKEN, JUMP, NOT_TAKEN = 0, 1, 2, 3
FLASH_REGIONS = ("code", "model")      # the windows flash_wait_states applies to (calibration.cycles)
WALK_INSTRUCTIONS = 300_000            # instructions simulated per wait-state count, over all the walks
WALK_LENGTH = 256                      # instructions counted per walk, after WARM_UP simulated ones
WARM_UP = 64                           # (enough to fill the 3-word FIFO and settle the port)
MIN_WALKS = 16                         # walks before the standard error is trusted, and the relative
PRECISION = 0.002                      # standard error of the mean wait cycles per instruction that ends them
_MULH = frozenset(("mulh", "mulhu", "mulhsu"))


def _base(mnemonic: str) -> str:
    m = mnemonic.lower()
    return (m[2:] if m.startswith("c.") else m).split(".")[0]


def occupancy(insn: isa.Insn | None) -> int:
    """ID/EX cycles of a non-transfer at zero wait states (pipeline_details.rst, RV32MFast)."""
    if insn is None:
        return 1
    if insn.cls in ("load", "store"):
        return 2
    if insn.cls == "mul":
        return 4 if _base(insn.mnemonic) in _MULH else 3
    if insn.cls == "div":
        return 38
    return 1


class _Blocks:
    """The blocks of some segments of a dump, their successors and the loads that read flash."""

    def __init__(self, dump: Dump, insns: dict[int, isa.Insn], segments: Sequence[int]):
        if dump.edges is None:
            raise ValueError("the Ibex fetch model needs the plugin's edge counts (edges=on)")
        counts: dict[int, int] = {}
        edges: dict[tuple[int, int], int] = {}
        flash: dict[int, int] = {}
        regions = [r[0] for r in dump.regions]
        self.flash_known = dump.mem_sites is not None
        for k in segments:
            ids, cnt = dump.segments[k]
            for t, n in zip(ids.tolist(), cnt.tolist(), strict=True):
                counts[t] = counts.get(t, 0) + n
            for s, d, n in zip(*(a.tolist() for a in dump.edges[k]), strict=True):
                edges[(s, d)] = edges.get((s, d), 0) + n
            if dump.mem_sites is not None:
                addrs, buckets, loads, _ = dump.mem_sites[k]
                for a, b, n in zip(addrs.tolist(), buckets.tolist(), loads.tolist(), strict=True):
                    if b < len(regions) and regions[b] in FLASH_REGIONS:
                        flash[a] = flash.get(a, 0) + n
        execs: dict[int, int] = {}
        self.blocks: dict[int, tuple] = {}
        for t, n in counts.items():
            addrs = dump.insn_addrs[dump.tb_offsets[t]:dump.tb_offsets[t + 1]].tolist()
            for a in addrs:
                execs[a] = execs.get(a, 0) + n
            self.blocks[t] = addrs
        self.instructions = sum(n * len(self.blocks[t]) for t, n in counts.items())
        self.counts = counts
        info = {}
        for t, addrs in self.blocks.items():
            rows = []
            for a in addrs:
                ins = insns.get(a)
                p = min(1.0, flash.get(a, 0) / execs[a]) if execs.get(a) and ins is not None \
                    and ins.cls == "load" else 0.0
                rows.append((a, ins.size if ins else 4, occupancy(ins), p))
            kind, _ = branch_kind(insns.get(addrs[-1]), "riscv")
            info[t] = (rows, kind, addrs[-1] + rows[-1][1], int(dump.tb_vaddr[t]))
        self.info = info
        succ: dict[int, tuple[list[int], np.ndarray]] = {}
        for (s, d), n in sorted(edges.items()):
            if s in info and d in info:
                succ.setdefault(s, ([], []))
                succ[s][0].append(d)
                succ[s][1].append(n)
        self.succ = {s: (d, np.cumsum(n) / np.sum(n)) for s, (d, n) in succ.items()}
        self.start = max(counts, key=counts.get) if counts else None
        self.ids = np.array(list(counts), dtype=np.int64)
        self.weights = np.cumsum([counts[t] for t in self.ids.tolist()], dtype=float)
        if len(self.weights):
            self.weights /= self.weights[-1]

    def start_block(self, rng: np.random.Generator) -> int:
        """A block drawn by its executions: the walk's stationary distribution (every block is left as
        often as it is entered), so a short walk from it samples the segment without bias."""
        return int(self.ids[min(int(np.searchsorted(self.weights, rng.random())), len(self.ids) - 1)])

    def walk(self, n: int, rng: np.random.Generator, start: int | None = None) -> list[tuple[int, int, int, float, int]]:
        """About ``n`` instructions (address, size, occupancy, flash share, transfer kind) from ``start``."""
        out: list[tuple[int, int, int, float, int]] = []
        t = self.start if start is None else start
        while len(out) < n and t is not None:
            rows, kind, fall, _ = self.info[t]
            nxt = self.succ.get(t)
            t2 = self.start if nxt is None else nxt[0][min(int(np.searchsorted(nxt[1], rng.random())),
                                                           len(nxt[0]) - 1)]
            to = self.info[t2][3]
            if kind == _COND:
                k = NOT_TAKEN if to == fall else TAKEN
            elif kind in _TAKEN_KINDS or to != fall:
                k = JUMP
            else:
                k = SEQ
            out.extend((a, s, c, p, SEQ) for a, s, c, p in rows[:-1])
            out.append((*rows[-1], k))
            t = t2
        return out


def simulate(trace: Sequence[tuple[int, int, int, float, int]], wait_states: int,
             flash_draws: np.ndarray, data_wait: int | None = None) -> np.ndarray:
    """The cycle each instruction of ``trace`` entered ID/EX, and last the cycle the last one left it,
    with ``wait_states`` on every fetch (the code runs from the code window) and ``data_wait``
    (default the same) on the loads whose draw in ``flash_draws`` falls under their flash share. A
    cycle-by-cycle model of the RTL named in the module's docstring."""
    w = int(wait_states)
    entered: list[int] = []
    dw = w if data_wait is None else int(data_wait)
    n = len(trace)
    addr = [r[0] for r in trace]
    size = [r[1] for r in trace]
    occ, red = [], []            # ID/EX cycles, and the one that sets the new PC (-1: none)
    for (_, _, c, p, k), u in zip(trace, flash_draws.tolist(), strict=True):
        if k == TAKEN:           # 2 cycles in ID/EX, the new PC in the second
            o, r = 2, 1
        elif k == JUMP:          # the new PC in the first cycle
            o, r = 1, 0
        elif k == NOT_TAKEN:
            o, r = 1, -1
        else:
            o, r = c + (dw if p > 0.0 and u < p else 0), -1
        occ.append(o)
        red.append(r)
    busy, left = False, 0          # the port (twin_port): busy_q, left_q
    out: list[list] = []           # outstanding requests [word, discard], oldest first (rdata_outstanding_q)
    pend = None                    # the ungranted request [word, discard] (valid_req_q, stored_addr_q)
    fetch_addr = addr[0] & ~3      # fetch_addr_q
    fifo: list[int] = []           # words in the fetch FIFO, the first holds the next instruction
    if_addr, nxt = addr[0], 0      # the next instruction to enter ID/EX
    cur, el, redirected = -1, 0, False
    first, cycle = True, 0
    while True:
        answering = busy and left == 0
        word = out[0] if answering else None
        pc_set, target = first, addr[0]
        first = False
        if cur >= 0:
            if red[cur] == el and not redirected:
                pc_set, redirected = True, True
                target = addr[cur + 1] if cur + 1 < n else if_addr
            id_ready = el >= occ[cur] - 1
        else:
            id_ready = True
        entries, outstanding = len(fifo), len(out)
        fifo_ready = not ((entries >= 3 or outstanding >= 1) and (entries >= 2 or outstanding >= 2))
        new_req = pend is None and (fifo_ready or pc_set) and outstanding < 2
        if pend is not None:
            req_addr, req_discard = pend[0], pend[1] or pc_set
        else:
            req_addr, req_discard = (target & ~3) if pc_set else fetch_addr, False
        valid_req = pend is not None or new_req
        gnt = valid_req and (not busy or answering)
        moved = False
        if not pc_set and id_ready and nxt < n:
            have = len(fifo) + (1 if word is not None and not word[1] else 0)
            moved = have >= (2 if (if_addr & 2) and size[nxt] == 4 else 1)
        # registers
        if pc_set:
            fifo = []
        else:
            if word is not None and not word[1]:
                fifo.append(word[0])
            if moved:
                end = if_addr + size[nxt]
                while fifo and fifo[0] + 4 <= end:
                    fifo.pop(0)
        if answering:
            out.pop(0)
        if pc_set:
            for o in out:
                o[1] = True
        if gnt:
            out.append([req_addr, req_discard])
        if pc_set:
            fetch_addr = (target & ~3) + (4 if new_req else 0)
        elif new_req:
            fetch_addr += 4
        pend = [req_addr, req_discard] if valid_req and not gnt else None
        if gnt:
            busy, left = True, w
        elif answering:
            busy = False
        elif busy:
            left -= 1
        if pc_set:
            if_addr, nxt = target, (cur + 1 if cur >= 0 else 0)
        if cur >= 0:
            el += 1
            if el >= occ[cur]:
                if cur == n - 1:
                    entered.append(cycle + 1)
                    return np.array(entered, dtype=np.int64)
                cur = -1
        if moved:
            entered.append(cycle + 1)
            cur, el, redirected = nxt, 0, False
            if_addr += size[nxt]
            nxt += 1
        cycle += 1


def wait_cycles(dump: Dump, elf: Path | str, segments: Sequence[int], wait_states: int, *,
                walk: int = WALK_INSTRUCTIONS, seed: int = 1) -> dict:
    """The cycles ``wait_states`` (on fetches and flash loads) add to ``segments`` of ``dump`` on an
    Ibex without instruction cache: ``{"cycles", "by_function": the same by function of the instruction
    that waited (ID/EX time at w minus at 0; they sum to cycles; "?" outside every function symbol),
    "flash_loads": whether the loads' data waits are in them (the dump had per-instruction memory
    counts), "walk": instructions simulated}``."""
    blocks = _Blocks(dump, isa.disassemble(elf, "riscv"), segments)
    if not blocks.instructions or wait_states <= 0:
        return {"cycles": 0.0, "by_function": {}, "flash_loads": blocks.flash_known, "walk": 0}
    functions = _function_table(elf)
    rng = np.random.default_rng(seed)
    extra = np.zeros(len(functions.names) + 1)
    counted = simulated = 0
    per_walk: list[float] = []    # each walk's wait cycles per counted instruction
    while simulated < walk:       # short walks from stationary starts (one long walk from one block would
        trace = blocks.walk(WARM_UP + WALK_LENGTH, rng, blocks.start_block(rng))   # see the loops it starts in)
        draws = rng.random(len(trace))
        d = np.diff(simulate(trace, wait_states, draws)) - np.diff(simulate(trace, 0, draws))
        fn = functions.lookup(np.array([r[0] for r in trace[WARM_UP:]], dtype=np.uint64))
        extra += np.bincount(fn, weights=d[WARM_UP:], minlength=len(extra))
        counted += len(trace) - WARM_UP
        simulated += len(trace)
        per_walk.append(float(d[WARM_UP:].sum()) / (len(trace) - WARM_UP))
        if len(per_walk) >= MIN_WALKS:   # stop once the mean is known to PRECISION (a loop's walks all agree)
            m, se = np.mean(per_walk), np.std(per_walk, ddof=1) / np.sqrt(len(per_walk))
            if se <= PRECISION * abs(m) or (m == 0 and se == 0):
                break
    scale = blocks.instructions / counted
    names = (*functions.names, "?")
    by_function = {names[i]: float(v) * scale for i, v in enumerate(extra.tolist()) if v}
    return {"cycles": float(extra.sum()) * scale, "by_function": by_function, "flash_loads": blocks.flash_known,
            "walk": simulated}


_FETCH_ACCELERATORS = ("icache", "cache", "art", "xip-cache", "prefetch", "tcm")


def board_wait_states(platform, clock_hz: int | None = None) -> int | None:
    """The flash wait states the model applies at on ``platform`` (at ``clock_hz``, default its default clock), or None where
    it does not apply: another core, a fetch accelerator in front of the flash (Ibex's instruction
    cache, rtl.config icache: true, is modelled by the twin's cache simulation instead), wait states on
    the RAM window (not modelled) or none known."""
    if platform.core != CORE or any(a.kind in _FETCH_ACCELERATORS for a in platform.accelerators):
        return None
    rtl = platform.rtl
    if rtl is not None:
        if str((rtl.config or {}).get("icache", False)).lower() == "true" or rtl.ram_wait_states:
            return None
        return int(rtl.flash_wait_states)
    ft = platform.flash_timing
    if ft is None or ft.kind != "internal":
        return None
    w = ft.wait_states(clock_hz or platform.default_clock_hz)
    return None if w is None else int(w)
