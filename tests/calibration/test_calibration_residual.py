"""The boosted residual survives in the calibration file: a hidden nonlinearity the linear model cannot
capture (calibration.synthetic's working-set regime), the residual measurably lowers the cross-validated
error, the file holds its trees as plain arrays, a loaded file predicts exactly what the fitted model
did (points and intervals, through `twin predict` too), malformed residual blocks are refused naming
the field, version-1 files still load."""

import copy
import dataclasses
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

from calibration import predict as P
from calibration import store
from calibration.cycles import FEATURES, feature_vector, memory_setup
from calibration.dataset import feature_matrix, save_dataset
from calibration.estimators import predict_interval
from calibration.fit import calibrate
from calibration.residual import INPUT_NAMES, ResidualBlockError, StoredResidual, check_block, mix_inputs
from calibration.synthetic import bench_dataset, default_hidden
from twin.cli.main import main
from twin.platforms import get_platform

BOARDS = {"stm32f4-disco": [48_000_000, 168_000_000]}
CONTRACT = ("platform", "model", "clock_mhz", "calibration", "ttft_seconds", "token_seconds",
            "tokens_per_second", "energy_per_token_joules", "fits", "memory")


def _nonlinear_bench():
    """Linear per-class costs, then × 1.15 once a phase runs more than 10^6 instructions."""
    hidden = dataclasses.replace(default_hidden(seed=3), regime_gain=0.15)
    return bench_dataset(hidden, boards=BOARDS, n_workloads=30, seed=5)


@pytest.fixture(scope="module")
def nonlinear():
    df = _nonlinear_bench()
    cal, model = calibrate(df, residual="on", return_model=True)
    return df, cal, model


@pytest.fixture(scope="module")
def linear_cal():
    return calibrate(bench_dataset(default_hidden(seed=3), boards=BOARDS, n_workloads=12, seed=5))


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _counts(scale: float = 1.0) -> P.TwinCounts:
    base = {"alu": 4e5, "load": 2e5, "store": 5e4, "mul": 5e4, "div": 1e3, "branch": 1e5, "fp": 8e4,
            "simd": 2e4, "other": 1e4}
    dec = {c: v * scale for c, v in base.items()}
    return P.TwinCounts("stm32f4-disco", "synthetic", "b0", "0" * 64, 5, 4, {c: 10 * v for c, v in dec.items()},
                        dec, None, None, {"flash_bytes": 1000, "ram_static_bytes": 100, "arena_bytes": 100,
                                          "stack_peak_bytes": 100, "model_image_bytes": 1000}, True, "sp")


# ------------------------------------------------------------------------------- the residual helps
def test_residual_lowers_the_cross_validated_error(nonlinear):
    _, cal, _ = nonlinear
    cv = cal.cycles.cv
    lin = cv["candidates"]["linear"]["by_workload"]["mape_percent"]
    res = cv["candidates"]["linear+residual"]["by_workload"]["mape_percent"]
    assert res < 0.8 * lin, (lin, res)           # measured: 6.80% -> 4.58%
    assert cv["model"] == "linear+residual" and cv["by_workload"]["mape_percent"] == res
    assert cal.has_residual and cal.model_kind == "linear+residual"
    block = cal.cycles.residual
    assert block["version"] == 1 and block["kind"] == "gradient_boosting" and len(block["trees"]) == 100
    assert block["input_names"] == list(INPUT_NAMES)
    # the regime is a step in log10(instructions): the first tree splits on it
    assert block["trees"][0]["feature"][0] == INPUT_NAMES.index("log10(n_instructions)")


# ------------------------------------------------------------------------------- file == memory
def test_loaded_file_predicts_what_the_fitted_model_predicts(nonlinear, tmp_path):
    df, cal, model = nonlinear
    path = store.save(cal, tmp_path / "cal.json")
    text = path.read_text()
    assert "pickle" not in text and json.loads(text)["version"] == store.VERSION == 2
    back = store.load(path)
    assert back == cal and back.id == cal.id
    X = feature_matrix(df)
    rng = np.random.default_rng(0)
    X = np.vstack([X, X[rng.integers(0, len(X), 50)] * rng.uniform(0.01, 100, (50, 1))])   # new sizes
    for got, want in zip(back.cycles.predict_interval(X), predict_interval(model, X), strict=True):
        assert _rel(got, want) <= 1e-9
    # the correction itself, evaluated by the numpy tree walker vs scikit-learn
    gbr = model.estimator_.residual_
    assert _rel(1 + back.cycles.stored_residual.correction(X), 1 + gbr.predict(mix_inputs(X))) <= 1e-12

    # through the prediction path, per phase: what `twin predict --json` prints
    plat = get_platform("stm32f4-disco")
    for scale in (0.1, 1.0, 30.0):
        counts = _counts(scale)
        r = P.predict_from_counts(plat, counts, calibration=path)
        mem = memory_setup(plat, plat.default_clock_hz)
        miss = {"wait_states": mem.wait_states, "fetch_miss": mem.fetch_miss, "load_miss": mem.load_miss}
        x_tok = feature_vector(counts.decode, loads_flash=None, branches_taken=None, **miss)
        x_pre = feature_vector(counts.prefill, loads_flash=None, branches_taken=None, **miss)
        (tok,), (tok_lo,), (tok_hi,) = predict_interval(model, x_tok[None, :])
        (pre,), _, _ = predict_interval(model, x_pre[None, :])
        clock = plat.default_clock_hz
        assert _rel(r["cycles"]["per_token"], tok) <= 1e-9 and _rel(r["cycles"]["prefill"], pre) <= 1e-9
        iv = r["token_seconds"]
        assert _rel([iv["value"], iv["low"], iv["high"]], np.array([tok, tok_lo, tok_hi]) / clock) <= 1e-9
        ttft = r["ttft_seconds"]
        assert _rel(ttft["high"], (pre + tok) * (tok_hi / tok) / clock) <= 1e-9   # the token's relative interval
        assert r["calibration"] == cal.id
        info = r["calibration_info"]
        assert info["id"] == cal.id and info["residual"] is True and info["model"] == "linear+residual"
        assert info["residual_factor"]["per_token"] == pytest.approx(tok / float(x_tok @ back.cycles.coef_vector()))
        assert any("boosted residual" in n for n in r["notes"])


def test_predict_json_says_whether_a_residual_was_used(nonlinear, linear_cal, tmp_path, monkeypatch):
    _, cal, _ = nonlinear
    monkeypatch.setattr(P, "twin_counts", lambda *a, **k: _counts())   # no emulator run
    for c, residual in ((cal, True), (linear_cal, False)):
        path = store.save(c, tmp_path / f"{c.id}.json")
        out = CliRunner().invoke(main, ["predict", "--platform", "stm32f4-disco", "--calibration", str(path),
                                        "--json"])
        assert out.exit_code == 0, out.output
        r = json.loads(out.output)
        assert all(k in r for k in CONTRACT) and r["calibration"] == c.id
        for k in ("ttft_seconds", "token_seconds", "tokens_per_second", "energy_per_token_joules"):
            assert set(r[k]) == {"value", "low", "high"}
        assert r["calibration_info"]["residual"] is residual
        human = CliRunner().invoke(main, ["predict", "--platform", "stm32f4-disco", "--calibration", str(path)])
        assert f"calibration {c.id} ({c.model_kind})" in human.output
    r = P.predict_from_counts(get_platform("stm32f4-disco"), _counts())
    assert r["calibration"] == "prior" and r["calibration_info"] == {
        "id": "prior", "model": "prior", "residual": False, "residual_factor": None,
        "distance": {"kind": "prior", "detail": "no calibration: published timings of the core"}}


# ------------------------------------------------------------------------------- the command
def test_calibrate_command_reports_both_cv_errors_side_by_side(tmp_path):
    ds = tmp_path / "bench.csv"
    save_dataset(_nonlinear_bench(), ds)
    out = tmp_path / "cal.json"
    r = CliRunner().invoke(main, ["calibrate", str(ds), "-o", str(out), "--residual-auto"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    linear = next(ln for ln in lines if "linear only" in ln)
    residual = next(ln for ln in lines if "with residual" in ln)
    assert "%" in linear and "%" in residual and "<- stored" in residual and "<- stored" not in linear
    assert "cycle model in the file: linear+residual (auto" in r.output
    cal = store.load(out)
    assert cal.has_residual and set(cal.cycles.cv["candidates"]) == {"linear", "linear+residual"}
    r = CliRunner().invoke(main, ["calibrate", str(ds), "-o", str(out), "--residual-auto", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["id"] == store.load(out).id and summary["rows"] == len(_nonlinear_bench())
    cand = summary["cv_candidates"]
    assert cand["linear+residual"]["by_workload"]["mape_percent"] < cand["linear"]["by_workload"]["mape_percent"]


def test_linear_only_calibration_has_no_residual_block(linear_cal, tmp_path):
    d = json.loads(store.save(linear_cal, tmp_path / "lin.json").read_text())
    assert "residual" not in d["cycles"] and "candidates" not in d["cycles"]["cv"]
    assert d["cycles"]["cv"]["model"] == "linear" and not linear_cal.has_residual
    X = feature_matrix(bench_dataset(default_hidden(seed=3), boards=BOARDS, n_workloads=3, seed=9))
    pred, lo, hi = linear_cal.cycles.predict_interval(X)
    assert _rel(pred, X @ linear_cal.cycles.coef_vector()) <= 1e-12 and np.all(lo <= pred) and np.all(pred <= hi)


def test_other_residual_types_are_refused_naming_the_type(nonlinear):
    df, _, _ = nonlinear
    with pytest.raises(store.CalibrationFileError, match="RandomForestRegressor.*GradientBoostingRegressor"):
        calibrate(df, residual="on", residual_model=RandomForestRegressor(n_estimators=2))
    mix = mix_inputs(feature_matrix(df))
    fitted = RandomForestRegressor(n_estimators=2, random_state=0).fit(mix, np.zeros(len(mix)))
    with pytest.raises(store.CalibrationFileError, match="RandomForestRegressor"):
        store.residual_block(fitted)
    custom_init = GradientBoostingRegressor(n_estimators=2, init=RandomForestRegressor(n_estimators=2)).fit(
        mix, np.zeros(len(mix)))
    with pytest.raises(store.CalibrationFileError, match="init estimator is a RandomForestRegressor"):
        store.residual_block(custom_init)
    with pytest.raises(ValueError, match="residual must be one of off, on, auto"):
        calibrate(df, residual="maybe")


# ------------------------------------------------------------------------------- old files
def _old_id(d: dict) -> str:
    """compute_id as version 1 of the store wrote it (no residual field anywhere)."""
    content = {k: d[k] for k in ("core", "boards", "cycles", "energy", "provenance")}
    return f"cal-{d['core']}-{hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]}"


def test_version_1_files_still_load(linear_cal, nonlinear, tmp_path):
    d = linear_cal.to_dict()
    d["version"] = 1
    d["cycles"]["cv"] = {"by_workload": d["cycles"]["cv"]["by_workload"]}   # what version 1 stored
    d["id"] = _old_id(d)
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(d, indent=2))
    old = store.load(path)
    assert old.version == 1 and not old.has_residual and old.id == d["id"]
    r = P.predict_from_counts(get_platform("stm32f4-disco"), _counts(), calibration=path)
    assert r["calibration"] == old.id and r["calibration_info"]["residual"] is False
    assert json.loads(store.save(old, tmp_path / "again.json").read_text())["version"] == 1
    # a residual block in a version-1 file is a contradiction
    d1 = nonlinear[1].to_dict()
    d1["version"] = 1
    path.write_text(json.dumps(d1))
    with pytest.raises(store.CalibrationFileError, match=r"field 'cycles.residual' needs file version 2"):
        store.load(path)


# ------------------------------------------------------------------------------- malformed blocks
def _broken(good: dict, edit) -> dict:
    d = copy.deepcopy(good)
    edit(d["cycles"]["residual"])
    return d


def _set(path: str, value):
    def edit(block):
        *head, last = path.split(".")
        node = block
        for k in head:
            node = node[int(k)] if k.isdigit() else node[k]
        node[int(last) if last.isdigit() else last] = value
    return edit


MALFORMED = [
    (_set("version", 7), r"field 'cycles.residual.version' is 7"),
    (_set("kind", "random_forest"), r"field 'cycles.residual.kind'"),
    (_set("inputs", "mix-v9"), r"field 'cycles.residual.inputs'"),
    (_set("learning_rate", -1), r"field 'cycles.residual.learning_rate' must be a finite number > 0"),
    (_set("init", "zero"), r"field 'cycles.residual.init' must be a finite number"),
    (_set("trees", {}), r"field 'cycles.residual.trees' must be a list"),
    (lambda b: b["trees"][3]["value"].pop(), r"field 'cycles.residual.trees\[3\].value' has 6 entries, "
                                             r"children_left has 7"),
    (lambda b: b["trees"][0]["threshold"].append(1.0), r"trees\[0\].threshold' has 8 entries"),
    (_set("trees.5.children_left.0", 99), r"field 'cycles.residual.trees\[5\].children_left\[0\]' is 99: "
                                          r"child index out of range"),
    (_set("trees.5.children_right.0", 0), r"trees\[5\].children_right\[0\]' is 0: child index out of range"),
    (_set("trees.2.children_right.0", -1), r"a node has two children or none"),
    (_set("trees.2.children_left.1", 1.5), r"trees\[2\].children_left\[1\]' must be an integer"),
    (_set("trees.1.feature.0", 14), r"field 'cycles.residual.trees\[1\].feature\[0\]' is 14: must be an input"),
    (_set("trees.1.threshold.0", None), r"trees\[1\].threshold\[0\]' must be a finite number"),
    (_set("trees.1.value.3", float("nan")), r"trees\[1\].value\[3\]' must be a finite number"),
    (_set("trees.4.children_left", []), r"trees\[4\].children_left' is empty"),
    (_set("trees.4", [1, 2]), r"field 'cycles.residual.trees\[4\]' must be an object"),
    (lambda b: b.clear(), r"field 'cycles.residual.version' is None"),
]


@pytest.mark.parametrize(("edit", "message"), MALFORMED)
def test_malformed_residual_blocks_name_the_field(nonlinear, tmp_path, edit, message):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(_broken(nonlinear[1].to_dict(), edit)))
    with pytest.raises(store.CalibrationFileError, match=message) as info:
        store.load(path)
    assert str(path) in str(info.value)


_JUNK = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 20), st.none(),
                  st.booleans(), st.just("x"))


@st.composite
def _trees(draw):
    """A valid tree (nodes numbered as scikit-learn does: children after their parent), then maybe one
    entry replaced by junk, one array cut or grown, or arrays of random junk altogether."""
    if draw(st.integers(0, 5)) == 0:
        return {k: draw(st.lists(_JUNK, max_size=8)) for k in
                ("children_left", "children_right", "feature", "threshold", "value")}
    left, right, feature, threshold = [-1], [-1], [-1], [0.0]
    for _ in range(draw(st.integers(0, 6))):
        leaves = [i for i, c in enumerate(left) if c == -1]
        node = draw(st.sampled_from(leaves))
        n = len(left)
        left[node], right[node] = n, n + 1
        feature[node] = draw(st.integers(0, len(INPUT_NAMES) - 1))
        threshold[node] = draw(st.floats(-2, 10))
        left += [-1, -1]
        right += [-1, -1]
        feature += [-1, -1]
        threshold += [0.0, 0.0]
    tree = {"children_left": left, "children_right": right, "feature": feature, "threshold": threshold,
            "value": draw(st.lists(st.floats(-1, 1), min_size=len(left), max_size=len(left)))}
    how = draw(st.sampled_from(["valid", "entry", "length"]))
    name = draw(st.sampled_from(sorted(tree)))
    if how == "entry":
        tree[name][draw(st.integers(0, len(left) - 1))] = draw(_JUNK)
    elif how == "length":
        tree[name] = tree[name][:-1] if draw(st.booleans()) else [*tree[name], draw(_JUNK)]
    return tree


@pytest.fixture(scope="module")
def good_dict(nonlinear):
    return nonlinear[1].to_dict()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees())
def test_fuzzed_tree_arrays_load_or_fail_clearly(good_dict, tree):
    """Whatever the arrays, validation names a field (CalibrationFileError), never an IndexError, or
    the tree evaluates to finite corrections."""
    good = good_dict
    block = {**good["cycles"]["residual"], "trees": [good["cycles"]["residual"]["trees"][0], tree]}
    d = {**good, "cycles": {**good["cycles"], "residual": block}}
    try:
        store.validate(d, "fuzz")
    except store.CalibrationFileError as exc:
        assert str(exc).startswith("fuzz: field 'cycles.residual.trees[1]"), exc
        with pytest.raises(ResidualBlockError):
            check_block(block)
        return
    X = np.abs(np.random.default_rng(0).normal(size=(20, len(FEATURES)))) * 10.0 ** np.arange(20)[:, None] / 1e3
    out = StoredResidual(block).correction(X)
    assert out.shape == (20,)
    if max(abs(v) for v in tree["value"]) < 1e300:
        assert np.isfinite(out).all()
