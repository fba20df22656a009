"""From time to energy: energy = power × time.

Prior (from the board's ``power:`` figures)::

    P(f, V) = V · (I_static · V/V0 + k · f · V/V0)        k = run current per Hz, V0 = figure's voltage
    E       = P · t

The run current of CMOS logic is C·V·f, so dynamic power scales with f·V² and static power roughly
with V (leakage rises faster; stated simplification).  That is the DVFS what-if: ``clock_hz`` and
``voltage_v`` move the power; the cycle count does not change with the voltage (wait states change
with the clock, which the cycle model handles).

Refined by calibration: energy is linear in the cycle features and the time,
``E = Σ e_j · feature_j + P_static · t``, with non-negative per-feature energies (per class of
instruction, per wait cycle) fitted from measured energy (``EnergyFeatures`` +
``calibration.estimators.NonNegativeLinear``).  The prior of e_j is V·k·(cycles per feature j).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.platforms import Platform

ASSUMED_VOLTAGE_V = 3.3
ASSUMED_VOLTAGE_SOURCE = ("assumption: 3.3 V board rail (the figure's voltage was nf in the platform "
                          "file)")


# How much wider the energy prior's interval gets when the run current is not a first-hand VDD-only
# figure (platforms' power.basis / second_hand / use_case): assumptions, stated in every prediction's
# notes. The relative error of the figure, ±u, multiplies the time's interval:
# low = 1 - (1 - t_low)(1 - u), high = (1 + t_high)(1 + u) - 1.
FIGURE_WIDENING = {
    "second_hand": (0.15, "the figure is second-hand (quoted by a third party, not read in the vendor's "
                          "document)"),
    "use_case": (0.30, "the figure is a use-case current (a vendor demo), not the CPU running a benchmark"),
    "chip": (0.25, "a whole-chip figure (every rail, clocks and flash traffic of its own conditions), not a "
                   "VDD-only run current: the firmware's share of it is not known"),
    "core": (0.30, "a core-rail figure only: I/O, flash and other rails are not in it"),
    "board": (0.50, "a whole-board figure (regulators, LEDs, USB, flash on the board), not the MCU's"),
}


SUPPLY_RANGE_V = (0.5, 5.5)   # every MCU supply rail (and core-voltage what-if) lies in here


class EnergyModelError(ValueError):
    """The board has no power figures to build an energy estimate from."""


class VoltageError(ValueError):
    """A supply voltage that no microcontroller runs at (NaN, negative, 1000 V)."""


def check_voltage(voltage_v: float | None, what: str = "voltage") -> float | None:
    """``voltage_v`` if it is a plausible supply voltage (finite, within SUPPLY_RANGE_V), None if None;
    otherwise VoltageError naming the value.  Every path that takes a voltage (predict's DVFS what-if,
    a bench trace without a voltage column) should call this before any work."""
    if voltage_v is None:
        return None
    lo, hi = SUPPLY_RANGE_V
    try:
        v = float(voltage_v)
    except (TypeError, ValueError):
        raise VoltageError(f"{what} {voltage_v!r} is not a number (volts)") from None
    if not (lo <= v <= hi):     # also refuses NaN
        raise VoltageError(f"{what} {voltage_v!r} V is outside the plausible supply range {lo:g}-{hi:g} V")
    return v


@dataclass(frozen=True)
class PowerModel:
    """Power of a board's MCU in run mode as a function of clock and voltage."""
    platform: str
    run_a_per_hz: float             # run current per Hz of core clock
    voltage_v: float                # the voltage the figures refer to (V0)
    static_a: float
    notes: tuple[str, ...] = ()
    # relative error of the figure (FIGURE_WIDENING): (low, high) and why, empty when first-hand VDD-only
    uncertainty: tuple[float, float] = (0.0, 0.0)
    widening: tuple[str, ...] = ()

    def widen(self, low: float, high: float) -> tuple[float, float]:
        """The energy interval's relative (low, high) from the time's: × (1 ± the figure's error)."""
        u_lo, u_hi = self.uncertainty
        return 1.0 - (1.0 - min(low, 1.0)) * (1.0 - u_lo), (1.0 + high) * (1.0 + u_hi) - 1.0

    def watts(self, clock_hz: float, voltage_v: float | None = None) -> float:
        """Run power at ``clock_hz`` and ``voltage_v`` (default: the figures' voltage)."""
        v = self.voltage_v if voltage_v is None else voltage_v
        if clock_hz <= 0 or v <= 0:
            raise EnergyModelError(f"clock and voltage must be positive, got {clock_hz} Hz, {v} V")
        scale = v / self.voltage_v
        return v * (self.static_a * scale + self.run_a_per_hz * clock_hz * scale)

    def joules_per_cycle(self, voltage_v: float | None = None) -> float:
        """Dynamic energy of one core cycle (independent of the clock)."""
        v = self.voltage_v if voltage_v is None else voltage_v
        return v * self.run_a_per_hz * (v / self.voltage_v)

    def static_watts(self, voltage_v: float | None = None) -> float:
        v = self.voltage_v if voltage_v is None else voltage_v
        return v * self.static_a * (v / self.voltage_v)

    def energy(self, seconds: float, clock_hz: float, voltage_v: float | None = None) -> float:
        return self.watts(clock_hz, voltage_v) * seconds


def figure_uncertainty(power) -> tuple[float, float, tuple[str, ...]]:
    """(low, high, reasons) of a ``Power`` figure's relative error by FIGURE_WIDENING: one factor per
    property that applies (second-hand, use case, a basis other than VDD-only), multiplied."""
    keys = [k for k in ("second_hand", "use_case") if getattr(power, k, False)]
    if power.basis in FIGURE_WIDENING:
        keys.append(power.basis)
    lo = hi = 1.0
    reasons = []
    for k in keys:
        u, why = FIGURE_WIDENING[k]
        lo *= 1.0 - u
        hi *= 1.0 + u
        reasons.append(f"±{u:.0%}: {why}")
    return 1.0 - lo, hi - 1.0, tuple(reasons)


def power_model(platform: Platform) -> PowerModel:
    """The prior power model from the platform file; raises when the run current was not found."""
    p = platform.power
    if p is None or p.run_ua_per_mhz is None:
        src = p.source if p is not None else "no power: section"
        raise EnergyModelError(f"{platform.id}: run current per MHz not found, no figure is published that "
                               f"the platform file could use ({src}); energy needs a bench calibration "
                               "with measured energy_j")
    notes = [f"run current {p.run_ua_per_mhz:g} uA/MHz ({p.source})"]
    basis = {"vdd": "VDD supply only", "chip": "whole chip", "core": "core rail only",
             "board": "whole board"}.get(p.basis or "", "basis not stated in the platform file")
    notes.append(f"run-current basis: {basis}" + ("; second-hand" if p.second_hand else "")
                 + ("; a use-case figure" if p.use_case else ""))
    voltage = p.voltage_v
    if voltage is None:
        voltage = ASSUMED_VOLTAGE_V
        notes.append(f"{ASSUMED_VOLTAGE_V} V: {ASSUMED_VOLTAGE_SOURCE}")
    static_ma = p.static_ma
    if static_ma is None:
        static_ma = 0.0
        notes.append("static current nf: 0 assumed (calibration fits it)")
    u_lo, u_hi, widening = figure_uncertainty(p)
    return PowerModel(platform.id, p.run_ua_per_mhz * 1e-6 / 1e6, voltage, static_ma * 1e-3, tuple(notes),
                      (u_lo, u_hi), widening)


def prior_energy_coefficients(cycle_coef: np.ndarray, power: PowerModel,
                              voltage_v: float | None = None) -> np.ndarray:
    """Energy coefficients over (cycle features..., seconds): J per feature unit, then static W."""
    return np.append(np.asarray(cycle_coef, dtype=float) * power.joules_per_cycle(voltage_v),
                     power.static_watts(voltage_v))


def energy_features(cycle_features: np.ndarray, seconds: np.ndarray | float) -> np.ndarray:
    """Append the time column to cycle features: the energy model's features."""
    f = np.atleast_2d(np.asarray(cycle_features, dtype=float))
    s = np.broadcast_to(np.asarray(seconds, dtype=float), (f.shape[0],))
    return np.column_stack([f, s])
