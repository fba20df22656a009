"""twin.results.analysis: frames from run reports, KV growth, scaling laws, Pareto front, recommend."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from twin.results import analysis as A


# ---------------------------------------------------------------------------------------------
# Constructed frames with the store's columns
# ---------------------------------------------------------------------------------------------
def run_row(run_id, *, platform="mps2-an386", model="tiny", bits=4, status="ok", error=None, matches=True,
            created_at="2026-01-01T00:00:00", **kw):
    row = {c: None for c in A.RUN_COLUMNS}
    row.update(run_id=run_id, cell_key=f"{platform}|{model}|q{bits}", status=status, error=error,
               platform=platform, model=model, model_sha256="ab" * 32, bits=bits, recipe=f"q{bits}",
               kv_cache="f32", prompt_tokens=8, tokens=4, seed=0, build_id="b1", compiler="gcc", cflags="-O2",
               qemu_version="7.2", git_commit="c0ffee", created_at=created_at, host="h", wall_seconds=0.1,
               instructions_total=1_000_000, prefill_instructions=600_000, decode_instructions_mean=100_000.0,
               flash_bytes=20_000, ram_static_bytes=1_600, arena_bytes=90_000, stack_peak_bytes=600,
               model_image_bytes=170_000, ram_bytes=4 << 20, matches_reference=matches)
    row.update(kw)
    return row


def pred_row(run_id, board, ms, mj, headroom, *, fits=None, ram_available=100_000, flash_available=1 << 20):
    ram_needed = int(round((1 - headroom) * ram_available))
    return {"run_id": run_id, "board": board, "calibration": "prior", "ttft_s": 3 * ms / 1e3,
            "ttft_s_low": 2 * ms / 1e3, "ttft_s_high": 4 * ms / 1e3, "token_s": ms / 1e3,
            "token_s_low": 0.8 * ms / 1e3, "token_s_high": 1.2 * ms / 1e3, "tokens_per_s": 1e3 / ms,
            "energy_per_token_j": mj / 1e3 if mj is not None else math.nan,
            "energy_low": math.nan, "energy_high": math.nan,
            "fits": (ram_needed <= ram_available) if fits is None else fits,
            "flash_needed": 200_000, "ram_needed": ram_needed, "flash_available": flash_available,
            "ram_available": ram_available, "clock_mhz": 100.0}


def constructed():
    """Seven boards × bit widths of model 'tiny', plus an older run, a failed cell and another model."""
    runs, preds = [], []

    def cell(rid, board, bits, ms, mj, headroom, **kw):
        runs.append(run_row(rid, bits=bits, **kw.pop("run", {})))
        preds.append(pred_row(rid, board, ms, mj, headroom, **kw))

    cell("a4", "board-a", 4, 10.0, 1.0, 0.50)           # front
    cell("a8", "board-a", 8, 12.0, 1.2, 0.30)           # dominated by a4
    cell("b4", "board-b", 4, 5.0, 2.0, 0.40)            # front: fastest
    cell("b8", "board-b", 8, 6.0, 1.5, 0.45)            # front: between
    cell("c4", "board-c", 4, 4.0, 0.5, -0.10)           # would dominate all, but does not fit
    cell("c8", "board-c", 8, 30.0, 0.9, 0.60)           # too slow
    cell("d4", "board-d", 4, 3.0, None, 0.70)           # no energy figure
    cell("e4", "board-e", 4, 2.0, 0.2, 0.10)            # too little headroom
    cell("f4", "board-f", 4, 1.0, 0.1, 0.90, run={"matches": False})      # wrong tokens
    cell("a4-old", "board-a", 4, 100.0, 9.0, 0.01, run={"created_at": "2025-01-01T00:00:00"})  # superseded
    cell("x4", "board-a", 4, 0.1, 0.01, 0.99, run={"model": "other"})   # another model
    runs.append(run_row("g2", platform="riscv32-virt", bits=2, status="failed", error="emulator hung"))
    return pd.DataFrame(runs, columns=list(A.RUN_COLUMNS)), pd.DataFrame(preds, columns=list(A.PREDICTION_COLUMNS))


def brute_pareto(points):
    """Indices of points (tuples to minimise) no other point dominates."""
    out = []
    for i, p in enumerate(points):
        if not any(all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
                   for j, q in enumerate(points) if j != i):
            out.append(i)
    return out


def test_recommend_returns_exactly_the_pareto_optimal_rows_and_each_reason():
    runs, preds = constructed()
    rec = A.recommend(runs, preds, model="tiny", max_ms_per_token=25, max_mj_per_token=5, min_headroom=0.2,
                      boards=None)
    got = [(r.board, r.bits) for r in rec.recommended.itertuples()]
    assert got == [("board-b", 4), ("board-b", 8), ("board-a", 4)]       # ranked by ms/token
    assert list(rec.recommended["rank"]) == [1, 2, 3]
    # the recommended rows are the brute-force Pareto front of the rows meeting the constraints
    passing = [("board-a", 4, 10.0, 1.0, 0.5), ("board-a", 8, 12.0, 1.2, 0.3), ("board-b", 4, 5.0, 2.0, 0.4),
               ("board-b", 8, 6.0, 1.5, 0.45)]
    front = {passing[i][:2] for i in brute_pareto([(p[2], p[3], -p[4]) for p in passing])}
    assert set(got) == front
    reasons = {(r.board, None if pd.isna(r.bits) else int(r.bits)): r.reason for r in rec.rejected.itertuples()}
    assert reasons[("board-a", 8)].startswith("dominated by board-a 4-bit (10 ms/token, 1 mJ/token")
    assert reasons[("board-c", 4)] == "does not fit (RAM short by 9.8 KiB); headroom -10.0% < 20.0%"
    assert reasons[("board-c", 8)] == "30 ms/token > 25"
    assert reasons[("board-d", 4)] == "energy not predicted (no power figures for the board)"
    assert reasons[("board-e", 4)] == "headroom 10.0% < 20.0%"
    assert reasons[("board-f", 4)] == "tokens differ from the host reference"
    assert reasons[(None, 2)] == "run failed on riscv32-virt: emulator hung"
    assert len(rec.rejected) == 7
    # the superseded run and the other model play no part
    assert "a4-old" not in set(rec.rejected["run_id"]) | set(rec.recommended["run_id"])
    assert "x4" not in set(rec.rejected["run_id"]) | set(rec.recommended["run_id"])
    js = rec.to_json()
    assert [r["board"] for r in js["recommended"]] == ["board-b", "board-b", "board-a"]
    assert js["recommended"][0]["mj_per_token"] == pytest.approx(2.0)


def test_recommend_without_constraints_keeps_unknown_energy_and_several_failures_join():
    runs, preds = constructed()
    rec = A.recommend(runs, preds, model="tiny")
    got = {(r.board, r.bits) for r in rec.recommended.itertuples()}
    # f4 (wrong tokens) and c4 (does not fit) still fail; d4 (3 ms, no energy) and e4 are on the front
    assert ("board-f", 4) not in got and ("board-c", 4) not in got
    assert {("board-e", 4), ("board-d", 4), ("board-b", 4)} <= got
    rec = A.recommend(runs, preds, model="tiny", max_ms_per_token=1, min_headroom=0.95)
    reasons = dict(zip(zip(rec.rejected["board"], rec.rejected["bits"], strict=True), rec.rejected["reason"], strict=True))
    assert reasons[("board-c", 4)] == "does not fit (RAM short by 9.8 KiB); 4 ms/token > 1; headroom -10.0% < 95.0%"
    assert rec.recommended.empty


def test_recommend_boards_filter_names_a_board_without_prediction():
    runs, preds = constructed()
    rec = A.recommend(runs, preds, model="tiny", boards=["board-a", "board-z"])
    assert [(r.board, r.bits) for r in rec.recommended.itertuples()] == [("board-a", 4)]
    reasons = dict(zip(rec.rejected["board"], rec.rejected["reason"], strict=True))
    assert reasons["board-z"].startswith("no prediction for board-z")
    with pytest.raises(ValueError, match="no run of model 'nope'"):
        A.recommend(runs, preds, model="nope")


@pytest.mark.parametrize("seed", range(8))
def test_recommend_front_equals_brute_force_on_random_sets(seed):
    rng = np.random.default_rng(seed)
    runs, preds = [], []
    for i, (b, bits) in enumerate(itertools.product(range(6), (2, 3, 4, 8))):
        rid = f"r{i}"
        runs.append(run_row(rid, bits=bits))
        ms = float(rng.choice([1.0, 2.0, 3.0, 5.0]))         # ties on purpose
        mj = float(rng.choice([0.5, 1.0, 2.0])) if rng.random() > 0.1 else None
        preds.append(pred_row(rid, f"b{b}", ms, mj, float(rng.choice([0.1, 0.3, 0.5]))))
    runs, preds = pd.DataFrame(runs), pd.DataFrame(preds)
    rec = A.recommend(runs, preds, model="tiny")
    t = A.board_table(runs, preds)
    pts = [(r.ms_per_token, math.inf if math.isnan(r.mj_per_token) else r.mj_per_token, -r.headroom)
           for r in t.itertuples()]
    want = {(t.iloc[i]["board"], int(t.iloc[i]["bits"])) for i in brute_pareto(pts)}
    assert {(r.board, int(r.bits)) for r in rec.recommended.itertuples()} == want
    assert all(r.startswith("dominated by ") for r in rec.rejected["reason"])
    assert len(rec.recommended) + len(rec.rejected) == len(t)


def test_pareto_mask_ties_and_nan():
    df = pd.DataFrame({"ms_per_token": [1, 1, 2, 1, np.nan], "mj_per_token": [1, 1, 0.5, 2, 0.1],
                       "headroom": [0.5, 0.5, 0.5, 0.5, 0.9]})
    assert A.pareto_mask(df).tolist() == [True, True, True, False, True]


# ---------------------------------------------------------------------------------------------
# Laws on constructed data
# ---------------------------------------------------------------------------------------------
def test_kv_growth_recovers_a_line_per_run():
    tc = pd.DataFrame({"run_id": ["r"] * 5 + ["s"] * 1, "position": [0, 1, 2, 3, 4, 0],
                       "instructions": [1000 + 7 * p for p in range(5)] + [500]})
    g = A.kv_growth(tc).set_index("run_id")
    assert g.loc["r", "a"] == pytest.approx(1000) and g.loc["r", "b"] == pytest.approx(7)
    assert g.loc["r", "rms_residual"] == pytest.approx(0, abs=1e-6)
    assert g.loc["s", "b"] == 0 and g.loc["s", "a"] == 500


def test_fit_law_forms_and_extrapolate():
    x = np.array([1e4, 3e4, 1e5, 3e5])
    df = pd.DataFrame({"params": np.repeat(x, 2), "bits": [4, 8] * 4})
    df["y"] = 5.0 * df["params"] ** 0.9 * df["bits"] ** 0.25
    law = A.fit_law(df, "y", ("params", "bits"), "power")
    assert law.coef["c"] == pytest.approx(5.0) and law.coef["params"] == pytest.approx(0.9)
    assert law.coef["bits"] == pytest.approx(0.25) and law.max_rel_residual < 1e-9
    e = A.extrapolate(law, params=1e6, bits=4)
    assert e.value == pytest.approx(5.0 * 1e6 ** 0.9 * 4 ** 0.25) and not e.inside
    assert "extrapolation" in e.note
    lin = A.fit_law(df.assign(y=100 + 3 * df["params"]), "y", ("params",), "linear")
    assert lin.coef == pytest.approx({"a": 100, "params": 3})
    with pytest.raises(ValueError, match="bits never varies"):
        A.fit_law(df[df["bits"] == 4], "y", ("params", "bits"), "power")
    with pytest.raises(ValueError, match="no law takes"):
        A.extrapolate([lin], context=5)


# ---------------------------------------------------------------------------------------------
# Real runs on the emulator
# ---------------------------------------------------------------------------------------------
def _param_count(cfg) -> int:
    kv = cfg.dim * cfg.n_kv_heads // cfg.n_heads
    per_layer = 2 * cfg.dim * cfg.dim + 2 * kv * cfg.dim + 3 * cfg.dim * cfg.hidden_dim + 2 * cfg.dim
    return cfg.vocab_size * cfg.dim + cfg.n_layers * per_layer + cfg.dim


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Random models of 4 widths (2 layers) and of 1-4 layers (width 64), 3 tokens each on mps2-an386."""
    from twin.model import modelgen
    from twin.model.image import write_image
    from twin.runner import RunSpec, run

    d = tmp_path_factory.mktemp("shapes")
    reports, params = [], {}
    for dim, layers in [(32, 2), (64, 2), (96, 2), (128, 2), (64, 1), (64, 3), (64, 4)]:
        cfg = modelgen.ModelConfig(dim=dim, hidden_dim=2 * dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                   vocab_size=300, seq_len=32)
        path = d / f"d{dim}-l{layers}.twlm"
        path.write_bytes(write_image(modelgen.generate_model(cfg), bits=4))
        r = run(RunSpec(platform="mps2-an386", model=str(path), tokens=3, prompt="ab"))
        assert r["matches_reference"]
        reports.append(r)
        params[r["model"]] = _param_count(cfg)
    return reports, params


@pytest.mark.qemu
def test_frames_from_reports_carry_the_report_numbers(shapes):
    reports, _ = shapes
    f = A.frames_from_reports(reports, A.predict_reports(reports))
    assert list(f.runs.columns) == list(A.RUN_COLUMNS)
    for c, cols in ((f.token_counts, A.TOKEN_COLUMNS), (f.functions, A.FUNCTION_COLUMNS),
                    (f.classes, A.CLASS_COLUMNS), (f.predictions, A.PREDICTION_COLUMNS)):
        assert list(c.columns) == list(cols)
    r0, row = reports[0], f.runs.iloc[0]
    assert row["instructions_total"] == r0["instructions"]["total"]
    assert row["prefill_instructions"] == r0["instructions"]["by_phase"]["prefill"]
    assert row["decode_instructions_mean"] == np.mean(r0["instructions"]["by_phase"]["decode"])
    tc = f.token_counts[f.token_counts["run_id"] == row["run_id"]]
    assert tc["instructions"].tolist() == r0["instructions"]["by_phase"]["decode"]
    fn = f.functions[f.functions["run_id"] == row["run_id"]]
    assert fn["instructions"].sum() == r0["instructions"]["total"]
    # every board whose counts come from mps2-an386 is predicted, the platform itself among them
    assert set(f.predictions["board"]) == set(A.boards_for("mps2-an386")) and "mps2-an386" in set(f.predictions["board"])
    # the KV cache makes each later token dearer: b > 0, a line to within 0.01%
    g = A.kv_growth(f.token_counts)
    assert (g["b"] > 0).all() and (g["max_rel_residual"] < 1e-4).all()


@pytest.mark.qemu
def test_scaling_law_recovers_the_layer_law_and_predicts_held_out_shapes(shapes):
    reports, params = shapes
    f = A.frames_from_reports(reports)
    runs = A.with_params(f.runs, params)
    by_model = runs.set_index("model")
    # Known law: with the width fixed, every layer adds the same parameters and the same instructions,
    # so decode instructions per token = a + b·params exactly. Fit on 1, 2 and 4 layers, predict 3.
    width64 = runs[runs["model"].str.startswith("d64-")]
    law = A.fit_law(width64[width64["model"] != "d64-l3.twlm"], "decode_instructions_mean", ("params",), "linear")
    assert law.max_rel_residual < 1e-4 and law.r2 > 0.999999
    held = by_model.loc["d64-l3.twlm"]
    e = A.extrapolate(law, params=held["params"])
    assert e.inside and e.value == pytest.approx(held["decode_instructions_mean"], rel=1e-4)
    # b is the per-layer increment of instructions over that of parameters
    one, four = by_model.loc["d64-l1.twlm"], by_model.loc["d64-l4.twlm"]
    b = (four["decode_instructions_mean"] - one["decode_instructions_mean"]) / (four["params"] - one["params"])
    assert law.coef["params"] == pytest.approx(b, rel=1e-3)
    # Across widths the per-token cost is not linear in parameters (attention and norms grow with the
    # width, matvecs with its square): the power law on widths 32, 64, 128 predicts width 96 within 3%.
    two = runs[runs["model"].str.endswith("-l2.twlm")]
    law = A.fit_law(two[two["model"] != "d96-l2.twlm"], "decode_instructions_mean", ("params",), "power")
    held = by_model.loc["d96-l2.twlm"]
    e = A.extrapolate([law], params=held["params"])
    assert e.value == pytest.approx(held["decode_instructions_mean"], rel=0.03)
    assert law.max_rel_residual < 0.05 and 0.5 < law.coef["params"] < 1.0
    # scaling_laws finds these groups by itself (and a context law per model: a + b·context)
    laws = A.scaling_laws(f, params)
    names = {x.name for x in laws}
    assert {"decode_vs_params", "token_vs_context"} <= names
    ctx = [x for x in laws if x.name == "token_vs_context"]
    assert len(ctx) == len(reports) and all(x.coef["context"] > 0 and x.max_rel_residual < 1e-4 for x in ctx)
