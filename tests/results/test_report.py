"""twin.results.report: the self-contained HTML report and comparison — parses, charts decode as PNG,
the numbers on the page are the frames'."""

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from twin.results import analysis as A
from twin.results import report as R

CHARTS = ("chart-tokens-per-s", "chart-energy", "chart-memory", "chart-kernels", "chart-context", "chart-pareto")


class Page(HTMLParser):
    """Tables (id → header column names, rows of cells (text, data-value, class), row attrs), figures,
    images, and anything that would need the network."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self.images, self.figures, self.external = {}, [], [], []
        self._table = self._row = self._cell = None
        self._figure = None
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.external.append((tag, a))
        for k in ("src", "href"):
            if k in a and not a[k].startswith("data:"):
                self.external.append((tag, a))
        if tag == "table":
            self._table = {"cols": [], "rows": []}
            self.tables[a.get("id")] = self._table
        elif tag == "th" and self._table is not None:
            self._table["cols"].append(a.get("data-col"))
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": []}
        elif tag == "td" and self._row is not None:
            self._cell = {"text": "", "value": a.get("data-value"), "class": a.get("class", "")}
        elif tag == "figure":
            self._figure = a.get("id")
            self.figures.append(self._figure)
        elif tag == "img":
            self.images.append((self._figure, a.get("src", "")))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row["cells"].append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["cells"]:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        self.text.append(data)


def parse(path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def rows_of(page: Page, table: str) -> list[dict]:
    t = page.tables[table]
    return [{"_attrs": r["attrs"], **dict(zip(t["cols"], r["cells"], strict=True))} for r in t["rows"]]


def check_cell(cell: dict, expected, kind: str):
    if expected is None or expected is pd.NA or (not isinstance(expected, str) and pd.isna(expected)):
        assert cell["text"] == "–"
    elif kind == "int":
        assert int(cell["text"].replace(",", "")) == int(expected)
    elif kind == "float":
        assert float(cell["value"]) == float(expected)          # exact
    elif kind == "bool":
        assert cell["text"] == ("yes" if expected else "no")
    else:
        assert cell["text"] == str(expected)


def check_png(src: str):
    import matplotlib.image as mpimg

    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.shape[0] > 50 and img.shape[1] > 50
    assert float(np.std(img[..., :3])) > 0.01            # something is drawn, not a blank canvas


def check_page_numbers(page: Page, frames: A.Frames):
    runs = frames.runs.set_index(frames.runs["run_id"].astype(str))
    got = rows_of(page, "runs")
    assert len(got) == len(runs)
    for row in got:
        want = runs.loc[row["_attrs"]["data-key"]]
        for col, _, kind in R.RUN_TABLE:
            check_cell(row[col], want[col], kind)
    bt = A.board_table(frames.runs[frames.runs["status"] == "ok"], frames.predictions)
    bt = bt.set_index([bt["run_id"].astype(str), bt["board"]])
    got = rows_of(page, "boards")
    assert len(got) == len(bt)
    for row in got:
        want = bt.loc[(row["run_id"]["text"], row["board"]["text"])]
        for col, _, kind in R.BOARD_TABLE:
            check_cell(row[col], want[col], "float" if kind == "pct" else kind)


@pytest.fixture(scope="module")
def real_reports():
    from twin.runner import RunSpec, run

    reports = [run(RunSpec(platform="mps2-an386", tokens=4, bits=b)) for b in (4, 8)]
    reports.append(run(RunSpec(platform="riscv32-virt", tokens=4, bits=4)))
    return reports, A.predict_reports(reports)


@pytest.mark.qemu
def test_report_of_real_runs_parses_charts_decode_numbers_equal_the_frames(tmp_path, real_reports):
    reports, preds = real_reports
    frames = A.frames_from_reports(reports, preds)
    out = R.write_report(frames, tmp_path / "rep")
    assert out == tmp_path / "rep" / "index.html"
    page = parse(out)
    assert page.external == []                              # self-contained
    assert [f for f in page.figures if f in CHARTS] == list(CHARTS)
    assert {f for f, _ in page.images} == set(CHARTS)       # every chart has an image
    for _, src in page.images:
        check_png(src)
    check_page_numbers(page, frames)
    kv = {r["_attrs"]["data-key"]: r for r in rows_of(page, "kv")}
    g = A.kv_growth(frames.token_counts)
    for r in g.itertuples():
        assert float(kv[str(r.run_id)]["b"]["value"]) == r.b


@pytest.mark.qemu
def test_report_through_the_results_store(tmp_path, real_reports):
    store_mod = pytest.importorskip("twin.results.store")
    reports, preds = real_reports
    with store_mod.ResultsStore(tmp_path / "r.sqlite") as st:
        for i, (r, p) in enumerate(zip(reports, preds, strict=True)):
            st.record(f"cell-{i}", {"platform": r["platform"], "bits": r["bits"]}, r, p, None,
                      {"git_commit": "abc123"})
        frames = A.frames_from_store(st)
    assert len(frames.runs) == 3 and len(frames.predictions) == sum(len(p) for p in preds)
    page = parse(R.write_report(frames, tmp_path / "rep"))
    check_page_numbers(page, frames)
    for _, src in page.images:
        check_png(src)
    # the store's frames give the same analysis numbers as the reports' own frames
    mine = A.frames_from_reports(reports, preds)
    a = A.board_table(mine.runs, mine.predictions).sort_values(["cell_key", "board"])
    b = A.board_table(frames.runs, frames.predictions)
    b = b.assign(cell_key=b["run_id"].map(dict(zip(frames.runs["run_id"], mine.runs["cell_key"], strict=True))))
    b = b.sort_values(["cell_key", "board"])
    for col in ("ms_per_token", "ttft_ms", "tokens_per_s", "headroom"):
        assert np.allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-12, equal_nan=True)


def test_report_of_synthetic_frames_and_a_failed_run(tmp_path):
    frames = A.synthetic_frames(60)
    failed = {c: None for c in A.RUN_COLUMNS}
    failed.update(run_id=999, cell_key="x|y|q4", status="failed", error="emulator hung", platform="mps2-an386",
                  model="tiny-60k", bits=4, kv_cache="f32", created_at="2026-01-02T00:00:00")
    frames.runs = pd.concat([frames.runs, pd.DataFrame([failed])], ignore_index=True)
    page = parse(R.write_report(frames, tmp_path))
    assert page.external == []
    for _, src in page.images:
        check_png(src)
    check_page_numbers(page, frames)
    row = [r for r in rows_of(page, "runs") if r["_attrs"]["data-key"] == "999"][0]
    assert row["_attrs"]["class"] == "failed" and row["error"]["text"] == "emulator hung"
    laws = rows_of(page, "laws")
    assert any(r["name"]["text"] == "decode_vs_params" for r in laws)


def test_comparison_highlights_exactly_what_changed(tmp_path):
    a = A.synthetic_frames(48)
    b = A.synthetic_frames(48)
    runs = b.runs.copy()
    hit = runs.index[5]
    runs.loc[hit, "instructions_total"] = int(runs.loc[hit, "instructions_total"] * 1.05)
    runs.loc[hit + 1, "stack_peak_bytes"] = runs.loc[hit + 1, "stack_peak_bytes"] - 8
    b.runs = runs.drop(index=runs.index[-1])                      # one cell only in A
    preds = b.predictions.copy()
    first = preds.index[preds["run_id"] == runs.loc[hit, "run_id"]][0]
    preds.loc[first, "token_s"] *= 1.10
    b.predictions = preds
    c = R.compare(a, b)
    assert int(c["cells"]["changed"].sum()) == 2 and len(c["only_a"]) == 1 and len(c["only_b"]) == 0
    row = c["cells"].set_index("cell_key").loc[runs.loc[hit, "cell_key"]]
    assert row["instructions_total_delta"] == runs.loc[hit, "instructions_total"] - a.runs.loc[hit, "instructions_total"]
    assert int(c["boards"]["changed"].sum()) == 1
    page = parse(R.write_comparison(a, b, tmp_path, labels=("main", "pr")))
    assert page.external == []
    cells = {r["_attrs"]["data-key"]: r for r in rows_of(page, "cells")}
    assert len(cells) == 47
    changed = {k for k, r in cells.items() if r["_attrs"].get("class") == "changed"}
    assert changed == {runs.loc[hit, "cell_key"], runs.loc[hit + 1, "cell_key"]}
    r = cells[runs.loc[hit, "cell_key"]]
    assert int(r["instructions_total_delta"]["text"].replace(",", "")) == int(row["instructions_total_delta"])
    assert "worse" in r["instructions_total_delta"]["class"]
    assert "better" in cells[runs.loc[hit + 1, "cell_key"]]["stack_peak_bytes_delta"]["class"]
    boards = [x for x in rows_of(page, "boards") if x["_attrs"].get("class") == "changed"]
    assert len(boards) == 1 and float(boards[0]["ms_per_token_rel"]["value"]) == pytest.approx(0.10)
    assert len(rows_of(page, "only-a")) == 1
    for _, src in page.images:
        check_png(src)
    assert "47 cells in both sets; 2 changed" in "".join(page.text)


@pytest.mark.qemu
def test_cli_recommend_report_compare_export_on_a_store(tmp_path, real_reports):
    from click.testing import CliRunner

    from twin.cli.main import main

    store_mod = pytest.importorskip("twin.results.store")
    reports, preds = real_reports
    dbs = []
    for name, bump in (("a", 0), ("b", 1000)):
        db = tmp_path / f"{name}.sqlite"
        with store_mod.ResultsStore(db) as st:
            for i, (r, p) in enumerate(zip(reports, preds, strict=True)):
                r = dict(r, instructions=dict(r["instructions"], total=r["instructions"]["total"] + bump * (i == 0)))
                st.record(f"cell-{i}", {"platform": r["platform"], "bits": r["bits"]}, r, p, None, {"git_commit": name})
        dbs.append(str(db))

    def invoke(*args):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    r = invoke("recommend", "--model", "builtin", "--db", dbs[0], "--json", "--min-headroom", "50%")
    assert r.exit_code == 0, r.output
    js = json.loads(r.output)
    with store_mod.ResultsStore(dbs[0]) as st:
        want = A.recommend(st.runs(), st.predictions(), model="builtin", min_headroom=0.5)
    assert [(x["board"], x["bits"]) for x in js["recommended"]] == list(
        zip(want.recommended["board"], want.recommended["bits"].astype(int), strict=True))
    assert all(x["reason"] for x in js["rejected"])
    r = invoke("recommend", "--model", "builtin", "--db", dbs[0], "--max-ms-per-token", "1")
    assert r.exit_code == 0 and "meets the constraints" in r.output and "ms/token > 1" in r.output
    r = invoke("report", "--db", dbs[0], "--runs", "bits == 4", "-o", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    page = parse(tmp_path / "rep" / "index.html")
    assert len(rows_of(page, "runs")) == 2
    r = invoke("report", "--compare", *dbs, "-o", str(tmp_path / "cmp"))
    assert r.exit_code == 0, r.output
    page = parse(tmp_path / "cmp" / "compare.html")
    changed = [x for x in rows_of(page, "cells") if x["_attrs"].get("class") == "changed"]
    assert [x["cell_key"]["text"] for x in changed] == ["cell-0"]
    assert changed[0]["instructions_total_delta"]["text"] == "+1,000"
    for fmt in ("speedscope", "perfetto"):
        r = invoke("export", "--format", fmt, "1", "--db", dbs[0], "-o", str(tmp_path / f"{fmt}.json"))
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / f"{fmt}.json").read_text())
    rep = tmp_path / "run.json"
    rep.write_text(json.dumps(reports[0]))
    r = invoke("export", "--format", "speedscope", str(rep), "-o", str(tmp_path / "s.json"))
    assert r.exit_code == 0, r.output
    for args, msg in ((("recommend", "--model", "nope", "--db", dbs[0]), "no run of model 'nope'"),
                      (("report", "--db", str(tmp_path / "none.sqlite"), "-o", str(tmp_path / "x")), "no results store"),
                      (("report", "--db", dbs[0], "--runs", "bits ==", "-o", str(tmp_path / "x")), "--runs"),
                      (("export", "--format", "perfetto", "99", "--db", dbs[0], "-o", str(tmp_path / "y.json")), "no run '99'")):
        r = CliRunner().invoke(main, list(args))
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
