"""twin.profile.ibex_fetch: the cycle model of Ibex's fetch path against what its RTL and our SoC's port
imply in closed form (the RTL boards check it end to end: tests/device/test_rtl.py).

The port answers one word 1 + w cycles after its grant and takes the next request as it answers, so
straight-line code is fetch bound at 1 + w cycles per word; the prefetch buffer fetches on while a
multi-cycle instruction holds ID/EX; a taken branch's target waits for the fetches already on the bus."""

from __future__ import annotations

import numpy as np
import pytest

from twin.platforms import get_platform
from twin.profile import ibex_fetch as F


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
    assert F.board_wait_states(get_platform("rtl-cv32e40p-ws3")) is None    # another core's fetch path
    assert F.board_wait_states(get_platform("stm32f4-disco")) is None
