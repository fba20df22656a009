"""Synthetic bench datasets from a hidden cost model: the ground truth for testing calibration.

A workload suite with varied class mixes and sizes runs on a few boards at several clocks; the
hidden model charges per-class costs, taken-branch penalties and flash wait states (through miss
rates) and adds multiplicative noise.  The estimators never see the hidden costs.

The hidden model is an in-order pipeline, *not* linear in the estimator's features (``overlap``,
``load_use``): multi-cycle instructions hide part of the flash fetch stalls (a max, as a prefetch
buffer does), and a load stalls the next instruction when it is an ALU operation using the result
(a share that depends on the mix, not on a count). So these datasets test the machinery — folds,
intervals, files — against a truth the model cannot fit exactly; the accuracy the product claims is
measured against the RTL boards (tests/device/test_rtl.py, benchmarks/rtl_calibration.py).
``HiddenModel.linear()`` is the plain linear truth, for solver tests only.

``HiddenModel.regime_gain`` > 0 adds what no per-class linear model can express (it is scale-free:
cost per instruction does not depend on how many there are): a working-set regime, every cycle
× (1 + regime_gain) once a phase runs more than ~10^``regime_log10`` instructions (a smooth step,
as when a phase's data outgrows a cache or flash accelerator).  It is the ground truth for testing
the boosted residual, which sees log10(instruction count) among its inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from twin.platforms import get_platform
from twin.profile.isa import CLASSES

from .cycles import FEATURES, memory_setup, wait_states_for

# fdiv: a decoded token of the built-in model on an FPU core runs about 2,900 VDIV/VSQRT in 630 K instructions
BASE_MIX = {"alu": 0.42, "load": 0.22, "store": 0.06, "mul": 0.05, "div": 0.002, "branch": 0.12,
            "fp": 0.08, "fdiv": 0.004, "simd": 0.03, "other": 0.018}


@dataclass(frozen=True)
class HiddenModel:
    """The truth: cost per FEATURE (cycles) and the noise level (relative standard deviation)."""
    coef: dict[str, float] = field(hash=False)
    noise: float = 0.005
    joules_per_cycle: float = 238e-12 * 3.3   # ~238 uA/MHz at 3.3 V
    static_watts: float = 0.002
    regime_gain: float = 0.0                  # extra relative cost in the large-working-set regime (0: linear)
    regime_log10: float = 6.0                 # log10(instructions of the phase) where it sets in
    regime_width: float = 0.1                 # how sharp the step is (decades)
    overlap: float = 0.5          # share of multi-cycle execution that hides flash fetch stalls
    load_use: float = 0.8         # stall cycles of a load whose next instruction is a dependent ALU op

    def vector(self) -> np.ndarray:
        return np.array([self.coef[f] for f in FEATURES])

    def linear(self) -> HiddenModel:
        """The same costs with the pipeline effects off: cycles = coef · features (solver tests)."""
        return dataclasses.replace(self, overlap=0.0, load_use=0.0)

    def cycles(self, x: np.ndarray, by_class: dict[str, int]) -> float:
        """The truth for one phase (before the regime factor and the noise)."""
        c = self.vector()
        n = float(sum(by_class.values()))
        k = len(CLASSES)
        execute = float(x[:k] @ c[:k]) + float(x[k] * c[k])                  # classes + taken branches
        fetch = float(x[k + 1] * c[k + 1])
        hidden = self.overlap * max(execute - n, 0.0)                        # multi-cycle work hides fetch
        stall = self.load_use * by_class["load"] * (by_class["alu"] / n if n else 0.0)
        return execute + max(fetch - hidden, 0.0) + float(x[k + 2] * c[k + 2]) + stall

    def regime_factor(self, n_instructions: float) -> float:
        """The nonlinear multiplier of a phase (1 without ``regime_gain``)."""
        if not self.regime_gain:
            return 1.0
        z = (np.log10(max(n_instructions, 1.0)) - self.regime_log10) / self.regime_width
        return 1.0 + self.regime_gain / (1.0 + float(np.exp(-np.clip(z, -60.0, 60.0))))


def default_hidden(seed: int = 1) -> HiddenModel:
    rng = np.random.default_rng(seed)
    # the wait terms per stall the prior models (its features carry each board's assumed miss fraction):
    # the truth's fetch stalls are 0.8 of those, its flash-load stalls 1.2
    base = {"n_alu": 1.0, "n_load": 1.6, "n_store": 1.1, "n_mul": 1.0, "n_div": 6.0, "n_branch": 1.0,
            "n_fp": 1.3, "n_fdiv": 12.0, "n_simd": 1.0, "n_other": 1.0, "branches_taken": 2.2, "fetch_wait": 0.8,
            "flash_load_wait": 1.2}
    return HiddenModel({k: v * float(rng.uniform(0.85, 1.15)) for k, v in base.items()})


def workload_suite(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """``n`` workloads with class mixes spread around a kernel-like mix and sizes 10^4..10^8."""
    rng = np.random.default_rng(seed)
    rows = []
    base = np.array([BASE_MIX[c] for c in CLASSES])
    for i in range(n):
        mix = rng.dirichlet(base * 40)
        size = 10 ** rng.uniform(4, 8)
        rows.append({"workload": f"w{i:02d}", "mix": mix, "size": size,
                     "taken": float(rng.uniform(0.35, 0.85)), "flash_frac": float(rng.uniform(0.2, 0.8))})
    return pd.DataFrame(rows)


def _noise(sigma: float, rng: np.random.Generator) -> float:
    """A multiplicative noise factor 1 + sigma · N(0, 1), kept positive (a measurement is never 0 or
    negative: at sigma 0.3 one row in a few thousand would be)."""
    return max(float(1 + sigma * rng.standard_normal()), 1e-3)


def bench_dataset(hidden: HiddenModel | None = None, *, boards: dict[str, list[int]] | None = None,
                  n_workloads: int = 40, seed: int = 0, build_id: str = "synthetic0") -> pd.DataFrame:
    """Rows per board × clock × workload × phase (prefill, decode), schema of docs/calibration.md."""
    hidden = hidden or default_hidden()
    boards = boards or {"stm32f4-disco": [48_000_000, 84_000_000, 120_000_000, 168_000_000],
                        "nucleo-l4r5zi": [80_000_000, 120_000_000],
                        "nrf52840-dk": [64_000_000]}
    rng = np.random.default_rng(seed + 1)
    suite = workload_suite(n_workloads, seed)
    rows = []
    for board, clocks in boards.items():
        mem = memory_setup(get_platform(board))      # the board's assumed miss fractions (no cache simulated)
        for clock in clocks:
            ws = wait_states_for(board, clock)
            for w in suite.itertuples(index=False):
                for phase, scale in (("prefill", 1.0), ("decode", 0.25)):
                    counts = np.round(w.mix * w.size * scale).astype(np.int64)
                    by_class = dict(zip(CLASSES, counts.tolist(), strict=True))
                    taken = round(w.taken * by_class["branch"])
                    loads_flash = round(w.flash_frac * by_class["load"])
                    x = np.array([*counts, taken, counts.sum() * ws * mem.fetch_miss,
                                  loads_flash * ws * mem.load_miss], dtype=float)
                    regime = hidden.regime_factor(float(counts.sum()))
                    true = hidden.cycles(x, by_class) * regime * _noise(hidden.noise, rng)
                    seconds = true / clock
                    energy = (true * hidden.joules_per_cycle + hidden.static_watts * seconds) * _noise(
                        hidden.noise, rng)
                    rows.append({"board": board, "platform": board, "workload": w.workload, "phase": phase,
                                 "clock_hz": clock, "build_id": build_id,
                                 **{f"n_{c}": by_class[c] for c in CLASSES},
                                 "loads_flash": loads_flash, "branches_taken": taken,
                                 "cycles": round(true), "energy_j": energy, "cycle_counter": "dwt",
                                 "compiler": "synthetic", "cflags": "-O2", "bench_date": "2025-01-01"})
    return pd.DataFrame(rows)
