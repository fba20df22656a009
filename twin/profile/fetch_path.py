"""The cycles flash wait states add on a core without instruction cache: cycle models of its fetch path.

One model per core (``MODELS``, chosen by the platform's core: ``board_wait_states`` says where one
applies); each is walked over the twin's counted blocks and block-to-block edges (``wait_cycles``).

Ibex (``simulate``). Why the additive prior (every fetch waits ``wait_states`` cycles) over-predicts
Ibex: its prefetch buffer keeps fetching while the ID/EX stage is busy with a multi-cycle instruction,
so part of each fetch's latency is hidden; and a taken branch waits for the sequential fetches already
on the bus, so a refill costs more than one fetch. What the model follows, from the RTL of
pythondata-cpu-ibex and our SoC:

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

CV32E40P without FPU (``simulate_cv32e40p``). The same two effects, with a shallower buffer and a
separate ID and EX stage, from the RTL of pythondata-cpu-cv32e40p (system_verilog/rtl/) and our SoC:

* cv32e40p_prefetch_buffer.sv: FIFO_DEPTH = 2 words; cv32e40p_prefetch_controller.sv: a new request
  whenever the FIFO's words plus the accepted unanswered requests are fewer than 2
  (``trans_valid_o = req_i && (fifo_cnt_masked + cnt_q < DEPTH)``; ``fifo_cnt_masked`` is 0 in a
  branch's cycle); a branch flushes the FIFO and drops the answers of the requests then accepted
  (``flush_cnt_q``), its target is requested once fewer than 2 are (``BRANCH_WAIT``); an answer is
  used in the cycle it arrives when the FIFO is empty (``fetch_rdata_o``, ``fifo_push_o``).
* cv32e40p_obi_interface.sv (TRANS_STABLE 0): a request the port does not grant at once is accepted
  all the same (``trans_ready_o`` in TRANSPARENT, so it counts in ``cnt_q``) and held until granted
  (REGISTERED, not ready meanwhile); on our port, busy until it answers, that is one request waiting
  beside the one in flight, both dropped if a branch comes: a refill waits for two fetches.
* cv32e40p_aligner.sv with cv32e40p_if_stage.sv: the IF/ID register takes an instruction when a word
  is there (``if_ready = fetch_valid & id_ready_i``) even for a compressed instruction in the upper
  half of the word already taken (MISALIGNED32 -> MISALIGNED16, the next word is kept, not taken);
  a 32-bit instruction across two words takes the second; a branch target in a word's upper half
  that is 32-bit first takes its word (BRANCH_MISALIGNED).
* cv32e40p_id_stage.sv / cv32e40p_controller.sv / cv32e40p_ex_stage.sv: ID is ready when EX is
  (``id_ready_o``), also when ID is empty; a jump sets the PC in its first cycle in ID, even while EX
  holds it there, unless its register waits on the instruction in EX (``jr_stall_o``); a taken branch
  sets it in its one cycle in EX (``branch_taken_ex_i``; ``ex_ready_o`` is 1 for a branch) and
  discards ID; an instruction reading the register a load in EX writes waits a cycle (``load_stall_o``);
  EX completes only when WB is ready (``wb_ready_i``), and a load waits in WB for the data port's
  answer: 1 cycle, + w from the code/model windows (cv32e40p_load_store_unit.sv ``lsu_ready_wb_o``).
  EX cycles (docs/source/pipeline.rst): 1, MULH* 5, DIV/REM 3..35 (19, as calibration/cores.yaml),
  CSR access 4.

The dynamic instruction stream is not recorded, so it is generated from what the twin counts: a
random walk over the segment's translated blocks with the plugin's block-to-block transition counts
(``Dump.edges``: exact taken / not-taken), each block's instructions from the ELF, and each load read
from the code/model windows with the share the plugin's per-instruction memory counts give
(``Dump.mem_sites``; without them no load waits and the caller keeps its flash-load term). The
result is the cycles of the walk at w wait states minus at 0, scaled to the segment's instructions:
what the prior adds to its zero-wait-state class costs in place of fetches × w (+ flash loads × w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.profile import isa
from twin.profile.counts import _COND, _TAKEN_KINDS, Dump, _function_table, branch_kind

CORE = "ibex"                          # the first model's core (MODELS, at the end, has them all)
SEQ, TAKEN, JUMP, NOT_TAKEN = 0, 1, 2, 3
FLASH_REGIONS = ("code", "model")      # the windows flash_wait_states applies to (calibration.cycles)
WALK_INSTRUCTIONS = 300_000            # instructions simulated per wait-state count, over all the walks
WALK_LENGTH = 256                      # instructions counted per walk, after WARM_UP simulated ones
WARM_UP = 64                           # (enough to fill the 3-word FIFO and settle the port)
MIN_WALKS = 16                         # walks before the standard error is trusted, and the relative
PRECISION = 0.002                      # standard error of the mean wait cycles per instruction that ends them
# How far simulated wait cycles may be from a board's, as a share of them: the RTL tests bound the models'
# error at 1 % of the mcycle difference to the board without wait states (tests/device/test_rtl.py); five
# times that for code and boards they do not run. A calibration asked about more wait states than it saw
# widens its interval by this × the share of the cycles past its rows (calibration/predict.py).
UNCERTAINTY = 0.05
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


_REGS = frozenset(("ra", "sp", "gp", "tp", "fp", *(f"t{i}" for i in range(7)), *(f"s{i}" for i in range(12)),
                   *(f"a{i}" for i in range(8))))
_RD_READ = frozenset(("c.add", "c.addi", "c.sub", "c.and", "c.andi", "c.or", "c.xor", "c.slli", "c.srli",
                      "c.srai", "c.addi16sp"))   # compressed two-operand forms: rd is also a source
_CSR = frozenset(("csrrw", "csrrs", "csrrc", "csrrwi", "csrrsi", "csrrci", "csrr", "csrw", "csrs", "csrc"))


def cv32e40p_occupancy(insn: isa.Insn | None) -> int:
    """EX cycles of an instruction on CV32E40P without FPU at zero wait states (docs/source/pipeline.rst):
    1, MULH* 5, DIV/REM 3..35 (19, the midpoint calibration/cores.yaml takes), CSR access 4."""
    if insn is None:
        return 1
    if insn.cls == "mul":
        return 5 if _base(insn.mnemonic) in _MULH else 1
    if insn.cls == "div":
        return 19
    if insn.mnemonic.lower() in _CSR:
        return 4
    return 1


def _registers(insn: isa.Insn | None) -> tuple[str | None, frozenset[str]]:
    """(the register ``insn`` writes or None, the registers it reads), from objdump's operands."""
    if insn is None:
        return None, frozenset()
    m = insn.mnemonic.lower()
    ops = [o.strip() for o in insn.operands.split("#")[0].replace("(", ",").replace(")", "").split(",")]
    regs = [o for o in ops if o in _REGS]
    first = ops[0] if ops and ops[0] in _REGS else None
    if insn.cls in ("store", "branch") and m not in ("jal", "jalr", "c.jal", "c.jalr"):
        return None, frozenset(regs)                          # branches, stores, c.jr: all sources
    if m in ("c.jalr",):
        return "ra", frozenset(regs)
    if first is None:
        return None, frozenset(regs)
    return first, frozenset(regs[1:] + ([first] if m in _RD_READ else []))


def cv32e40p_hazard(prev: isa.Insn | None, insn: isa.Insn | None) -> int:
    """1 where ``insn`` waits in ID while ``prev``, the instruction before it, is in EX: it reads the
    register a load writes (``load_stall_o``), or it is a jalr whose target register ``prev`` writes
    (``jr_stall_o``; the jump's new PC waits too)."""
    if prev is None or insn is None:
        return 0
    rd, _ = _registers(prev)
    if rd is None:
        return 0
    _, reads = _registers(insn)
    if rd not in reads:
        return 0
    m = insn.mnemonic.lower()
    return 1 if prev.cls == "load" or m in ("jalr", "c.jr", "c.jalr") else 0


class _Blocks:
    """The blocks of some segments of a dump, their successors and the loads that read flash."""

    def __init__(self, dump: Dump, insns: dict[int, isa.Insn], segments: Sequence[int], core: str = CORE):
        if dump.edges is None:
            raise ValueError(f"the {MODELS[core].name} fetch model needs the plugin's edge counts (edges=on)")
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
            prev = None
            for a in addrs:
                ins = insns.get(a)
                p = min(1.0, flash.get(a, 0) / execs[a]) if execs.get(a) and ins is not None \
                    and ins.cls == "load" else 0.0
                if core == CORE:
                    rows.append((a, ins.size if ins else 4, occupancy(ins), p))
                else:             # CV32E40P: EX cycles, and the stall behind the instruction before
                    rows.append((a, ins.size if ins else 4, cv32e40p_occupancy(ins), p, cv32e40p_hazard(prev, ins)))
                prev = ins
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
        """About ``n`` instructions (address, size, occupancy, flash share, transfer kind; on CV32E40P then
        the hazard) from ``start``."""
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
            if len(rows[-1]) == 4:
                out.extend((a, s, c, p, SEQ) for a, s, c, p in rows[:-1])
                out.append((*rows[-1], k))
            else:
                out.extend((a, s, c, p, SEQ, h) for a, s, c, p, h in rows[:-1])
                out.append((*rows[-1][:4], k, rows[-1][4]))
            t = t2
        self.next = t
        return out

    def following(self) -> list[tuple]:
        """The instructions of the block the last walk goes on with (their transfer kinds SEQ: what
        follows them is not simulated)."""
        return [(*r[:4], SEQ, *r[4:]) for r in self.info[self.next][0]] if self.next is not None else []


def _port_step(busy: bool, left: int, gnt: bool, answering: bool, w: int) -> tuple[bool, int]:
    """Our SoC's port (rtl/soc/twin_soc.sv twin_port) one cycle on: a grant starts a w-cycle wait, the
    answer frees it, a wait counts down."""
    if gnt:
        return True, w
    if answering:
        return False, left
    return busy, left - 1 if busy else left


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
        busy, left = _port_step(busy, left, gnt, answering, w)
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


def simulate_cv32e40p(trace: Sequence[tuple], wait_states: int, flash_draws: np.ndarray,
                      data_wait: int | None = None) -> np.ndarray:
    """``simulate`` for CV32E40P without FPU: the cycle each instruction of ``trace`` (rows of
    ``_Blocks.walk`` with the hazard last) entered ID, and last the cycle the last one left EX. A
    cycle-by-cycle model of the RTL named in the module's docstring (one clock edge per loop turn: the
    combinational signals of the cycle first, then the registers)."""
    w = int(wait_states)
    dw = w if data_wait is None else int(data_wait)
    n = len(trace)
    addr = [r[0] for r in trace]
    size = [r[1] for r in trace]
    exo = [r[2] for r in trace]
    kind = [r[4] for r in trace]
    haz = [r[5] if len(r) > 5 else 0 for r in trace]
    wb_wait = [dw if p > 0.0 and u < p else 0 for (_, _, _, p, _, *_), u in zip(trace, flash_draws.tolist(), strict=True)]
    entered: list[int] = []
    busy, left = False, 0             # the instruction port (twin_port): busy_q, left_q
    registered = False                # cv32e40p_obi_interface: a request accepted, not yet granted (REGISTERED)
    cnt, flush = 0, 0                 # prefetch controller: cnt_q, flush_cnt_q (addresses are not followed: the
    #                                   words come in order from the last target; BRANCH_WAIT only holds its address)
    fifo = 0                          # words in the prefetch FIFO
    align = 0                         # aligner: 0 the next instruction starts a word (ALIGNED32, MISALIGNED16),
    #                                   1 in the upper half of the word taken (MISALIGNED32), 2 BRANCH_MISALIGNED
    idj, jumped = -1, False           # the instruction in ID, and whether its jump has set the PC
    exk, el = -1, 0                   # the instruction in EX, its cycles there so far
    wb_until = 0                      # the cycle the load in WB has its answer (wb_ready from then)
    nxt = 0                           # the next instruction IF hands to ID
    first, cycle = True, 0
    while True:
        answering = busy and left == 0
        wb_ready = cycle >= wb_until
        if exk >= 0 and kind[exk] in (TAKEN, NOT_TAKEN):
            ex_ready = True                                   # ex_ready_o: | branch_in_ex_i
        else:
            ex_ready = wb_ready and (exk < 0 or el + 1 >= exo[exk])
        stall = idj > 0 and haz[idj] and exk == idj - 1       # load_stall_o / jr_stall_o
        id_ready = ex_ready and not stall
        pc_set, target = first, addr[0]
        first = False
        if exk >= 0 and kind[exk] == TAKEN and el == 0:       # branch_taken_ex_i: the PC in its EX cycle
            pc_set, target = True, addr[exk + 1] if exk + 1 < n else addr[exk]
        elif idj >= 0 and kind[idj] == JUMP and not jumped and not stall:   # jump_in_dec, ~jr_stall_o, ~jump_done_q
            pc_set, target, jumped = True, addr[idj + 1] if idj + 1 < n else addr[idj], True
        # prefetch controller and OBI interface
        trans_valid = (0 if pc_set else fifo) + cnt < 2
        accept = trans_valid and not registered
        obi_req = registered or trans_valid
        gnt = obi_req and (not busy or answering)
        fetch_valid = (fifo > 0 or answering) and not (pc_set or flush > 0)
        # aligner and IF/ID: what enters ID at this edge (not behind a taken branch: its fall-through is discarded)
        issue = pop = False
        if fetch_valid and id_ready and nxt < n and not (idj >= 0 and kind[idj] == TAKEN):
            if align == 2 and size[nxt] == 4:                 # BRANCH_MISALIGNED, 32-bit: take the word only
                pop, align = True, 1
            else:
                issue = True
                if align == 0:
                    pop, align = True, (0 if size[nxt] == 4 else 1)
                elif align == 1:
                    pop, align = size[nxt] == 4, (1 if size[nxt] == 4 else 0)
                else:
                    pop, align = True, 0
        # registers
        if pc_set:
            fifo = 0
            align = 2 if target & 2 else 0
        else:
            push = answering and (fifo > 0 or not pop) and flush == 0
            fifo += int(push) - int(pop and fifo > 0)
        if pc_set:
            flush = cnt - (1 if answering and cnt > 0 else 0)
        elif answering and flush > 0:
            flush -= 1
        cnt += int(accept) - int(answering)
        if not registered and obi_req and not gnt:
            registered = True
        elif registered and gnt:
            registered = False
        busy, left = _port_step(busy, left, gnt, answering, w)
        # the pipeline
        if exk >= 0 and ex_ready:                             # EX to WB; a load then waits for its answer
            wb_until = max(wb_until, cycle + 1 + wb_wait[exk])  # (a branch leaves EX while WB waits)
            if exk == n - 1:
                entered.append(cycle + 1)
                return np.array(entered, dtype=np.int64)
            exk = -1
        elif exk >= 0:
            el += 1
        if id_ready and idj >= 0:
            exk, el, idj = idj, 0, -1
        if issue:
            entered.append(cycle + 1)
            idj, jumped = nxt, False
            nxt += 1
        cycle += 1


def wait_cycles(dump: Dump, elf: Path | str, segments: Sequence[int], wait_states: int, *,
                walk: int = WALK_INSTRUCTIONS, seed: int = 1, core: str = CORE) -> dict:
    """The cycles ``wait_states`` (on fetches and flash loads) add to ``segments`` of ``dump`` on
    ``core`` (a key of ``MODELS``; default Ibex) without instruction cache: ``{"cycles", "by_function":
    the same by function of the instruction that waited (time from its entry into ID at w minus at 0;
    they sum to cycles; "?" outside every function symbol), "flash_loads": whether the loads' data
    waits are in them (the dump had per-instruction memory counts), "walk": instructions simulated}``."""
    sim = MODELS[core].simulate
    blocks = _Blocks(dump, isa.disassemble(elf, "riscv"), segments, core)
    if not blocks.instructions or wait_states <= 0:
        return {"cycles": 0.0, "by_function": {}, "flash_loads": blocks.flash_known, "walk": 0}
    functions = _function_table(elf)
    rng = np.random.default_rng(seed)
    extra = np.zeros(len(functions.names) + 1)
    counted = simulated = 0
    per_walk: list[float] = []    # each walk's wait cycles per counted instruction
    while simulated < walk:       # short walks from stationary starts (one long walk from one block would
        trace = blocks.walk(WARM_UP + WALK_LENGTH, rng, blocks.start_block(rng))   # see the loops it starts in)
        end = len(trace)          # simulated one block further than counted: the cost of the last instruction,
        trace = trace + blocks.following()   # the transfer every walk ends on, runs to the next one's entry into ID
        draws = rng.random(len(trace))
        d = np.diff(sim(trace, wait_states, draws)) - np.diff(sim(trace, 0, draws))
        fn = functions.lookup(np.array([r[0] for r in trace[WARM_UP:end]], dtype=np.uint64))
        extra += np.bincount(fn, weights=d[WARM_UP:end], minlength=len(extra))
        counted += end - WARM_UP
        simulated += len(trace)
        per_walk.append(float(d[WARM_UP:end].sum()) / (end - WARM_UP))
        if len(per_walk) >= MIN_WALKS:   # stop once the mean is known to PRECISION (a loop's walks all agree)
            m, se = np.mean(per_walk), np.std(per_walk, ddof=1) / np.sqrt(len(per_walk))
            if se <= PRECISION * abs(m) or (m == 0 and se == 0):
                break
    scale = blocks.instructions / counted
    names = (*functions.names, "?")
    by_function = {names[i]: float(v) * scale for i, v in enumerate(extra.tolist()) if v}
    return {"cycles": float(extra.sum()) * scale, "by_function": by_function, "flash_loads": blocks.flash_known,
            "walk": simulated}


@dataclass(frozen=True)
class FetchModel:
    name: str                 # the core, as the docstrings name it
    report: str               # the run report's by_phase_wait_cycles "model"
    simulate: Callable[..., np.ndarray]


MODELS = {"ibex": FetchModel("Ibex", "ibex-prefetch", simulate),
          "cv32e40p": FetchModel("CV32E40P", "cv32e40p-prefetch", simulate_cv32e40p)}

_FETCH_ACCELERATORS = ("icache", "cache", "art", "xip-cache", "prefetch", "tcm")


def board_wait_states(platform, clock_hz: int | None = None) -> int | None:
    """The flash wait states the model of ``platform.core`` (``MODELS``) applies at on ``platform`` (at
    ``clock_hz``, default its default clock), or None where none applies: another core, a fetch
    accelerator in front of the flash (Ibex's instruction cache, rtl.config icache: true, is modelled by
    the twin's cache simulation instead), CV32E40P's FPU (rtl.config fpu: true; its timings are not
    modelled), wait states on the RAM window (not modelled) or none known."""
    if platform.core not in MODELS or any(a.kind in _FETCH_ACCELERATORS for a in platform.accelerators):
        return None
    rtl = platform.rtl
    if rtl is not None:
        cfg = rtl.config or {}
        if any(str(cfg.get(k, False)).lower() == "true" for k in ("icache", "fpu")) or rtl.ram_wait_states:
            return None
        return int(rtl.flash_wait_states)
    ft = platform.flash_timing
    if ft is None or ft.kind != "internal":
        return None
    w = ft.wait_states(clock_hz or platform.default_clock_hz)
    return None if w is None else int(w)
