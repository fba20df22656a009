"""`calibration.predict.function_cycles`: a decoded token's prior cycles per function, split by term, and
what no function can be given. On real runs of the model: the functions and the remainder add up to the
whole token's prior cycles, and that whole is `twin predict`'s figure for the same generation (counted by a
separate `twin run`, through the run report)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from calibration import predict as P
from calibration.cycles import memory_setup
from twin.device.build import build_firmware
from twin.platforms import get_platform
from twin.profile.counts import SegmentProfile, analyze, sum_profiles
from twin.profile.isa import CLASSES
from twin.runner import RunSpec, run_decode_profiles

pytestmark = pytest.mark.qemu
TOKENS = 2


@pytest.fixture(scope="module", params=["stm32f4-disco", "rtl-ibex-ws2"])
def decoded(request):
    """(platform, its run report, the decode segments of that run (the plugin with the memory traffic),
    and those segments analysed without the plugin's edge counts). stm32f4-disco: Cortex-M4F, 5 flash
    wait states, one fetch per instruction; rtl-ibex-ws2: RV32 with compressed code, 2 wait states and
    a 4-byte fetch width (the fetch term counts bytes)."""
    plat = get_platform(request.param)
    report, decode, dump = run_decode_profiles(RunSpec(platform=plat.id, tokens=TOKENS, mem_traffic=True,
                                                       board=False))
    assert len(decode) == TOKENS and [p.total for p in decode] == report["instructions"]["by_phase"]["decode"]
    # the same run without the plugin's edge counts: conditional branches split where the block counts
    # determine it, the rest unresolved (what a dump without edges gives)
    derived = analyze(dataclasses.replace(dump, edges=None), build_firmware(plat).elf, plat.arch)
    n_boot = (len(derived) - 1) // 2 - TOKENS - 1
    derived_decode = [derived[2 * (n_boot + 1 + j) + 1] for j in range(TOKENS)]   # after the prefill
    assert [p.total for p in derived_decode] == [p.total for p in decode]
    return plat, report, decode, derived_decode


def _adds_up(fc: dict) -> None:
    """Functions + remainder == the whole token, in total and term by term."""
    whole = fc["per_token"]
    parts = sum(f["cycles"] for f in fc["functions"].values()) + fc["unattributed"]["cycles"]
    assert parts == pytest.approx(whole, rel=1e-12)
    for term, value in fc["per_token_terms"].items():
        got = sum(f["terms"][term] for f in fc["functions"].values()) + fc["unattributed"]["terms"][term]
        assert got == pytest.approx(value, rel=1e-12, abs=1e-6), term
    for f in fc["functions"].values():
        assert math.isclose(f["cycles"], sum(f["terms"].values()), rel_tol=1e-12)


def test_functions_and_remainder_add_up_to_twin_predict(decoded):
    plat, report, decode, derived = decoded
    fc = P.function_cycles(plat, decode, wait=report["instructions"]["by_phase_wait_cycles"])
    _adds_up(fc)
    # the same generation through the run report: predict_from_counts' figure, term by term
    pred = P.predict_from_counts(plat, P.counts_from_report(report))
    assert fc["per_token"] == pytest.approx(pred["cycles"]["per_token"], rel=1e-12)
    assert fc["per_token_terms"].keys() == pred["cycles"]["per_token_terms"].keys()
    for term, value in pred["cycles"]["per_token_terms"].items():
        assert fc["per_token_terms"][term] == pytest.approx(value, rel=1e-12, abs=1e-6), term
    assert fc["tokens"] == TOKENS and fc["ran_on"] == plat.id and fc["factors"]["cross_core"] == 1.0
    # twin predict's own split, from the run report (a separate run): the same cycles per function
    by_fn = pred["cycles"]["per_token_by_function"]
    assert by_fn["functions"].keys() == fc["functions"].keys()
    for f, v in fc["functions"].items():
        assert by_fn["functions"][f] == pytest.approx(v["cycles"], rel=1e-12, abs=1e-6), f
    assert by_fn["unattributed"] == pytest.approx(fc["unattributed"]["cycles"], rel=1e-12, abs=1e-6)
    assert sum(by_fn["functions"].values()) + by_fn["unattributed"] == pytest.approx(pred["cycles"]["per_token"],
                                                                                    rel=1e-12)

    # instructions per function are the profile's; the functions are ordered by cycles
    total = sum_profiles(decode)
    assert {f: v["instructions"] for f, v in fc["functions"].items()} == \
        {f: v / TOKENS for f, v in total.by_function.items()}
    cycles = [v["cycles"] for v in fc["functions"].values()]
    assert cycles == sorted(cycles, reverse=True)

    # the remainder: only the flash-load wait states and the unresolved branches' assumed taken share
    rest = fc["unattributed"]
    assert {t for t, v in rest["terms"].items() if v} <= {"branches_taken", "fetch_wait", "flash_load_wait"}
    mem = memory_setup(plat)
    assert mem.wait_states > 0
    loads = sum(total.mem[r]["loads"] for r in ("code", "model")) / TOKENS
    assert rest["loads_flash"] == loads
    # the plugin counted the loads per instruction: every flash load's wait states are a function's
    assert rest["terms"]["flash_load_wait"] == 0
    per_fn = {f: sum(m.get(r, {}).get("loads", 0) for r in ("code", "model")) / TOKENS
              for f, m in total.mem_by_function.items()}
    assert sum(per_fn.values()) == pytest.approx(loads)
    wait = report["instructions"]["by_phase_wait_cycles"]
    for f, v in fc["functions"].items():
        if wait is not None:       # the twin's cycle model of the Ibex fetch path: fetch and data waits together
            assert v["terms"]["flash_load_wait"] == 0
            assert v["terms"]["fetch_wait"] == pytest.approx(wait["decode_by_function"].get(f, 0.0) / TOKENS)
        elif mem.dcache is None:   # each function's flash loads × the assumed miss fraction
            assert v["terms"]["flash_load_wait"] == pytest.approx(per_fn.get(f, 0) * mem.wait_states * (1 - mem.data_hit))
        else:                      # each function's simulated data-cache misses
            misses = total.dcache_misses_by_function[mem.dcache.key].get(f, 0) / TOKENS
            assert v["terms"]["flash_load_wait"] == pytest.approx(misses * mem.dcache.beats * mem.wait_states)
    if mem.dcache is not None:
        sim = total.dcache[mem.dcache.key]
        assert 0 < sim["misses"] < sim["lookups"] <= loads * TOKENS
    assert per_fn[next(iter(fc["functions"]))] > 0.9 * loads          # the weights: the matvec's
    # every conditional branch split exactly (edge counts): no assumed taken share is left to the remainder
    assert rest["branches_unresolved"] == total.branches_unresolved == 0 and rest["terms"]["branches_taken"] == 0
    # split from the block counts alone, the unresolved ones are the remainder's, at the assumed fraction
    guessed = P.function_cycles(plat, derived)
    _adds_up(guessed)
    g = guessed["unattributed"]
    assert g["branches_unresolved"] == sum_profiles(derived).branches_unresolved / TOKENS > 0
    assert sum(g["branches_unresolved_by_function"].values()) == pytest.approx(g["branches_unresolved"])
    assert g["terms"]["branches_taken"] > 0
    # without per-function memory counts (an older profile), the flash-load wait states are the remainder's
    bare = [dataclasses.replace(p, mem_by_function=None, dcache={}, dcache_misses_by_function={}) for p in decode]
    old = P.function_cycles(plat, bare)
    _adds_up(old)
    assert old["unattributed"]["terms"]["flash_load_wait"] == pytest.approx(loads * mem.wait_states * (1 - mem.data_hit))
    assert all(f["terms"]["flash_load_wait"] == 0 for f in old["functions"].values())
    if mem.icache is None:
        # with a fetch width, the refetch after the unresolved branches' assumed taken ones is not a function's
        # (none with the edge counts)
        assert rest["terms"]["fetch_wait"] == 0
        assert (g["terms"]["fetch_wait"] > 0) == (mem.fetch_width is not None)
        return
    # a simulated instruction cache: each function waits for its own misses' line fills, the remainder for
    # the exposed part of the prefetched lines' fills (1 - instructions per line / fill cycles)
    sim, c = total.icache[mem.icache.key], mem.icache
    for f, v in fc["functions"].items():
        misses = total.icache_misses_by_function[c.key].get(f, 0) / TOKENS
        assert v["terms"]["fetch_wait"] == pytest.approx(misses * c.beats * mem.wait_states, abs=1e-9), f
    per_line = c.line_bytes / (total.fetch_bytes / total.total)
    exposed = max(0.0, 1 - per_line / (c.beats * (mem.wait_states + 1)))
    assert rest["terms"]["fetch_wait"] == pytest.approx(exposed * sim["prefetched"] / TOKENS * c.beats * mem.wait_states)
    assert 0 < exposed < 1 and sim["prefetched"] > 0


def test_the_loop_heaviest_function_is_the_matvec(decoded):
    plat, _, decode, _ = decoded
    fc = P.function_cycles(plat, decode)
    top = next(iter(fc["functions"]))
    assert top.startswith("matvec_q")
    # a function's class terms are its instruction counts × the prior's class costs
    coef = P.board_model(plat, plat.default_clock_hz, plat.fpu, None, plat.core).coef
    counts = sum_profiles(decode).by_function_class[top]
    for i, c in enumerate(CLASSES):
        assert fc["functions"][top]["terms"][f"n_{c}"] == pytest.approx(counts[c] / TOKENS * coef[i])


def test_other_boards_cross_core_and_soft_float(decoded, monkeypatch):
    """The same counts for other boards (another core across, another ISA without a fetch width), and with a
    cross-core factor and soft-float calls forced on: still the whole token of predict_from_counts."""
    plat, report, decode, derived = decoded
    counts = P.counts_from_report(report)
    boards = ["esp32-s3-devkit", "nucleo-l4r5zi"] if plat.arch == "arm" else ["esp32-c3-devkit", "rtl-ibex"]
    for board in boards:
        fc = P.function_cycles(board, decode, ran_on=plat.id)
        _adds_up(fc)
        assert fc["per_token"] == pytest.approx(P.predict_from_counts(get_platform(board), counts)["cycles"]["per_token"],
                                                rel=1e-12)
    real = P.board_model

    def forced(*a, **kw):
        return dataclasses.replace(real(*a, **kw), factor=1.7, extra_per_fp=9.0)

    monkeypatch.setattr(P, "board_model", forced)
    fc = P.function_cycles(plat, decode, wait=report["instructions"]["by_phase_wait_cycles"])
    _adds_up(fc)
    pred = P.predict_from_counts(plat, counts)["cycles"]
    assert fc["per_token"] == pytest.approx(pred["per_token"], rel=1e-12)
    assert fc["per_token_terms"]["soft_float_calls"] == pytest.approx(pred["per_token_terms"]["soft_float_calls"])
    assert fc["factors"] == {"cross_core": 1.7, "soft_float_cycles_per_fp": 9.0, "residual": None}
    assert fc["unattributed"]["terms"]["soft_float_calls"] == 0


def test_a_profile_without_per_function_counts_is_refused():
    bare = SegmentProfile(10, {**dict.fromkeys(CLASSES, 0), "alu": 10}, {"f": 10})   # e.g. Renode's
    with pytest.raises(P.PredictError, match="per function"):
        P.function_cycles("stm32f4-disco", bare)
    with pytest.raises(P.PredictError, match="at least one"):
        P.function_cycles("stm32f4-disco", [])
