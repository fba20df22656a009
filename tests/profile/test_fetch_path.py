"""twin.profile.fetch_path: the cycle models of Ibex's and CV32E40P's fetch paths against what their RTL
and our SoC's port imply in closed form (the RTL boards check them end to end: tests/device/test_rtl.py).

The port answers one word 1 + w cycles after its grant and takes the next request as it answers, so
straight-line code is fetch bound at 1 + w cycles per word; the prefetch buffer fetches on while a
multi-cycle instruction holds ID/EX; a taken branch's target waits for the fetches already on the bus."""

from __future__ import annotations

import numpy as np
import pytest

from twin.platforms import get_platform
from twin.profile import fetch_path as F
from twin.profile import isa


def straight(n: int, size: int, occupancy: int = 1, flash: float = 0.0) -> list[tuple]:
    return [(0x1000 + i * size, size, occupancy, flash, F.SEQ) for i in range(n)]


def loop(iterations: int, k: int = 8) -> list[tuple]:
    """k 32-bit instructions, the last a taken branch back to the first."""
    return [(0x1000 + 4 * i, 4, 1, 0.0, F.TAKEN if i == k - 1 else F.SEQ) for _ in range(iterations) for i in range(k)]


def per_instruction(trace: list[tuple], w: int, skip: int = 100) -> float:
    """Steady-state cycles per instruction (after ``skip`` instructions have filled the buffer)."""
    entered = F.simulate(trace, w, np.zeros(len(trace)))
    return float(entered[-2] - entered[skip]) / (len(entered) - 2 - skip)


@pytest.mark.parametrize("w", [0, 1, 2, 3, 5])
def test_straight_line_code_is_fetch_bound_at_one_word_per_1_plus_w_cycles(w):
    assert per_instruction(straight(400, 4), w) == pytest.approx(1 + w, abs=0.01)
    assert per_instruction(straight(400, 2), w) == pytest.approx(max(1.0, (1 + w) / 2), abs=0.01)  # two per word


@pytest.mark.parametrize("w", [0, 1, 2, 3, 4])
def test_a_multi_cycle_instruction_hides_the_fetch_behind_it(w):
    """MUL holds ID/EX 3 cycles: the next word arrives meanwhile up to 2 wait states."""
    assert per_instruction(straight(400, 4, occupancy=3), w) == pytest.approx(max(3, 1 + w), abs=0.01)


@pytest.mark.parametrize("w", [1, 2, 3])
def test_a_taken_branch_waits_for_the_fetches_on_the_bus(w):
    """8 instructions a turn: at no wait state 8 + the taken branch's 2; each wait state adds its 8 fetches'
    w, and the branch 2 w (its target is fetched after the sequential fetch already granted), where the
    additive prior charges 9 w."""
    def per_turn(w: int) -> float:          # turns 10 to 50 of 60, from first instruction to first instruction
        entered = F.simulate(loop(60), w, np.zeros(8 * 60))
        return float(entered[8 * 50] - entered[8 * 10]) / 40

    assert per_turn(0) == 10
    assert per_turn(w) == 10 + 10 * w


def test_a_flash_load_waits_on_the_data_port_beside_the_fetches():
    """A load from flash holds ID/EX 2 + w cycles (the data port's answer), the instruction port meanwhile
    fetches on; a load the plugin saw read RAM does not wait."""
    assert per_instruction(straight(400, 4, occupancy=2, flash=1.0), 2) == pytest.approx(4, abs=0.01)
    assert per_instruction(straight(400, 4, occupancy=2, flash=0.0), 2) == pytest.approx(3, abs=0.01)


def test_the_model_applies_to_uncached_ibex_boards_only():
    assert F.board_wait_states(get_platform("rtl-ibex-ws2")) == 2
    assert F.board_wait_states(get_platform("rtl-ibex")) == 0
    assert F.board_wait_states(get_platform("rtl-ibex-icache")) is None     # the cache simulation's board
    assert F.board_wait_states(get_platform("gd32vf103")) is None           # a core without a model
    assert F.board_wait_states(get_platform("stm32f4-disco")) is None


# CV32E40P without FPU (simulate_cv32e40p): docs/source/pipeline.rst gives the zero-wait-state cycles (taken
# branch 3, 4 to a non-word-aligned 32-bit target; jump 2; MULH 5; a load-use stall 1); with w wait states
# the port fetches one word per 1 + w cycles, and the 2-word prefetch buffer (FIFO words + accepted
# requests < 2) keeps it busy while ID/EX waits. A branch or jump drops the two requests then accepted:
# the one in flight and the one the OBI interface holds until the port grants it.

def cv_straight(n: int, size: int, occupancy: int = 1, flash: float = 0.0, hazard: int = 0) -> list[tuple]:
    return [(0x1000 + i * size, size, occupancy, flash, F.SEQ, hazard) for i in range(n)]


def cv_per_instruction(trace: list[tuple], w: int, skip: int = 100) -> float:
    entered = F.simulate_cv32e40p(trace, w, np.zeros(len(trace)))
    return float(entered[-2] - entered[skip]) / (len(entered) - 2 - skip)


def cv_per_turn(body: list[tuple], w: int) -> float:
    """Cycles per turn of ``body`` repeated 60 times, turns 10 to 50."""
    entered = F.simulate_cv32e40p(body * 60, w, np.zeros(len(body) * 60))
    return float(entered[len(body) * 50] - entered[len(body) * 10]) / 40


def cv_loop(k: int = 8, start: int = 0x1000, last: int = F.TAKEN, size: int = 4) -> list[tuple]:
    """k instructions, the last a taken branch (or jump) back to the first."""
    return [(start + size * i, size, 1, 0.0, last if i == k - 1 else F.SEQ, 0) for i in range(k)]


@pytest.mark.parametrize("w", [0, 1, 2, 3, 5])
def test_cv32e40p_straight_line_code_is_fetch_bound(w):
    assert cv_per_instruction(cv_straight(400, 4), w) == pytest.approx(1 + w, abs=0.01)
    # a compressed instruction in a word's upper half enters ID once the next word is there (aligner)
    assert cv_per_instruction(cv_straight(400, 2), w) == pytest.approx(max(1.0, (1 + w) / 2), abs=0.01)


@pytest.mark.parametrize("w", [0, 1, 3, 4, 5])
def test_cv32e40p_hides_fetches_behind_mulh_load_use_and_flash_loads(w):
    """MULH holds EX 5 cycles; a load-use stall costs 1 (2 cycles a pair at no wait state); a load from
    flash holds WB for its w (the data port is separate): each is hidden as far as the fetch is slower."""
    assert cv_per_instruction(cv_straight(400, 4, occupancy=5), w) == pytest.approx(max(5, 1 + w), abs=0.01)
    assert cv_per_instruction(cv_straight(400, 4, hazard=1), w) == pytest.approx(max(2, 1 + w), abs=0.01)
    load_then_alu = [(0x1000 + 4 * i, 4, 1, 1.0 if i % 2 == 0 else 0.0, F.SEQ, 0) for i in range(400)]
    assert cv_per_instruction(load_then_alu, w) == pytest.approx(1 + w, abs=0.01)    # additive: (2 + 3 w) / 2


@pytest.mark.parametrize("w", [0, 1, 2, 3, 5])
def test_cv32e40p_a_refill_waits_for_two_fetches(w):
    """8 32-bit instructions a turn: at no wait state 7 + the taken branch's 3 (to a target across two words
    + 1; a jump 2); with wait states the port never idles: each turn fetches its words and the two requests
    the branch or jump drops, 1 + w cycles each (the additive prior: 10 + 9 w)."""
    assert cv_per_turn(cv_loop(), w) == 10 * (1 + w)
    assert cv_per_turn(cv_loop(last=F.JUMP), w) == 9 * (1 + w)
    assert cv_per_turn(cv_loop(start=0x1002), w) == 11 * (1 + w)    # 9 words a turn


@pytest.mark.parametrize("w, cycles", [(0, 5), (1, 8), (2, 12), (3, 16), (5, 24)])
def test_cv32e40p_selftest_loop_costs_what_the_rtl_measures(w, cycles):
    """The firmware's self-test loop (c.add, c.addi, a taken c.bnez over two words, as built at 0x800003a8):
    the RTL boards' mcycle per iteration at 0 to 5 wait states (measured once on boards with those wait
    states; test_rtl.py checks 0 ws) is 5, then 4 fetches of 1 + w: its 2 words and the 2 dropped."""
    body = [(0x800003a8, 2, 1, 0.0, F.SEQ, 0), (0x800003aa, 2, 1, 0.0, F.SEQ, 0), (0x800003ac, 2, 1, 0.0, F.TAKEN, 0)]
    assert cv_per_turn(body, w) == cycles


def test_cv32e40p_stalls_come_from_the_registers():
    """load_stall_o: an instruction reading the register a load just wrote; jr_stall_o: a jalr whose register
    the instruction before wrote."""
    def insn(m: str, ops: str, cls: str, size: int = 4):
        return isa.Insn(mnemonic=m, size=size, cls=cls, known=True, operands=ops)

    lw = insn("lw", "a5,0(a0)", "load")
    assert F.cv32e40p_hazard(lw, insn("add", "a4,a5,a3", "alu")) == 1
    assert F.cv32e40p_hazard(lw, insn("add", "a4,a3,a2", "alu")) == 0
    assert F.cv32e40p_hazard(lw, insn("c.add", "a5,a3", "alu", 2)) == 1           # rd is a source too
    assert F.cv32e40p_hazard(lw, insn("sw", "a5,4(sp)", "store")) == 1
    assert F.cv32e40p_hazard(insn("addi", "a5,a5,1", "alu"), insn("add", "a4,a5,a3", "alu")) == 0   # forwarded
    assert F.cv32e40p_hazard(insn("c.mv", "ra,a5", "alu", 2), insn("c.jr", "ra", "branch", 2)) == 1
    assert F.cv32e40p_occupancy(insn("mulhu", "a6,a2,a7", "mul")) == 5
    assert F.cv32e40p_occupancy(insn("mul", "a2,a2,a7", "mul")) == 1


def test_the_cv32e40p_model_applies_to_its_boards_without_fpu():
    assert F.board_wait_states(get_platform("rtl-cv32e40p-ws3")) == 3
    assert F.board_wait_states(get_platform("rtl-cv32e40p")) == 0
    assert F.board_wait_states(get_platform("rtl-cv32e40p-fpu")) is None    # RV32F timings not modelled
