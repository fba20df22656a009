"""twin.results.export: speedscope JSON against a schema from the format's spec, Chrome/Perfetto trace
events checked structurally (and by Perfetto's trace processor when it can run here)."""

import json

import pytest

from twin.results import analysis as A
from twin.results import export as E

# The required parts of https://www.speedscope.app/file-format-schema.json (speedscope's
# src/lib/file-format-spec.ts): a File has $schema, shared.frames and profiles; a Frame has a name;
# a profile is "evented" (events of type O/C at a frame index) or "sampled" (samples: stacks of frame
# indices, weights: one per sample); units are an enum.
UNITS = ["none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"]
SPEEDSCOPE_SCHEMA = {
    "type": "object",
    "required": ["$schema", "shared", "profiles"],
    "properties": {
        "$schema": {"const": "https://www.speedscope.app/file-format-schema.json"},
        "shared": {"type": "object", "required": ["frames"], "properties": {
            "frames": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "file": {"type": "string"}, "line": {"type": "number"},
                "col": {"type": "number"}}}}}},
        "profiles": {"type": "array", "items": {"oneOf": [
            {"type": "object", "required": ["type", "name", "unit", "startValue", "endValue", "samples", "weights"],
             "properties": {"type": {"const": "sampled"}, "name": {"type": "string"}, "unit": {"enum": UNITS},
                            "startValue": {"type": "number"}, "endValue": {"type": "number"},
                            "samples": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                            "weights": {"type": "array", "items": {"type": "number"}}}},
            {"type": "object", "required": ["type", "name", "unit", "startValue", "endValue", "events"],
             "properties": {"type": {"const": "evented"}, "name": {"type": "string"}, "unit": {"enum": UNITS},
                            "startValue": {"type": "number"}, "endValue": {"type": "number"},
                            "events": {"type": "array", "items": {"type": "object", "required": ["type", "at", "frame"],
                                       "properties": {"type": {"enum": ["O", "C"]}, "at": {"type": "number"},
                                                      "frame": {"type": "number"}}}}}}]}},
        "name": {"type": "string"},
        "activeProfileIndex": {"type": "number"},
        "exporter": {"type": "string"},
    },
}


def validate(doc, schema, where="$"):
    """The subset of JSON Schema the schema above uses (type, required, properties, items, const, enum,
    oneOf). jsonschema is used instead when it is installed."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None and where == "$":
        jsonschema.validate(doc, schema)
        return
    types = {"object": dict, "array": list, "string": str, "number": (int, float)}
    if "oneOf" in schema:
        ok = 0
        for s in schema["oneOf"]:
            try:
                validate(doc, s, where)
                ok += 1
            except AssertionError:
                pass
        assert ok == 1, f"{where}: matches {ok} of oneOf"
        return
    if "type" in schema:
        assert isinstance(doc, types[schema["type"]]) and not isinstance(doc, bool), f"{where}: not {schema['type']}"
    if "const" in schema:
        assert doc == schema["const"], f"{where}: {doc!r} != {schema['const']!r}"
    if "enum" in schema:
        assert doc in schema["enum"], f"{where}: {doc!r} not in {schema['enum']}"
    for k in schema.get("required", []):
        assert k in doc, f"{where}: missing {k}"
    for k, s in schema.get("properties", {}).items():
        if isinstance(doc, dict) and k in doc:
            validate(doc[k], s, f"{where}.{k}")
    if "items" in schema:
        for i, x in enumerate(doc):
            validate(x, schema["items"], f"{where}[{i}]")


def check_speedscope(doc: dict):
    validate(doc, SPEEDSCOPE_SCHEMA)
    n = len(doc["shared"]["frames"])
    for p in doc["profiles"]:
        assert len(p["samples"]) == len(p["weights"]) > 0
        assert all(0 <= i < n and float(i).is_integer() for s in p["samples"] for i in s)
        assert all(w >= 0 for w in p["weights"])
        assert p["endValue"] == pytest.approx(p["startValue"] + sum(p["weights"]))


def check_chrome_trace(doc: dict) -> list[dict]:
    """Structure Perfetto's JSON importer needs: traceEvents, each with name/ph/pid/tid; X events with
    numeric ts and dur >= 0 in µs; complete events on one track nest properly (no partial overlaps)."""
    assert isinstance(doc["traceEvents"], list)
    xs = []
    for e in doc["traceEvents"]:
        assert {"name", "ph", "pid", "tid"} <= set(e) and e["ph"] in ("X", "M", "C", "B", "E", "i")
        if e["ph"] in ("X", "C"):
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
            xs.append(e)
        if e["ph"] == "C":
            assert all(isinstance(v, (int, float)) for v in e["args"].values())
    xs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack = []
    eps = 1e-6
    for e in xs:
        while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"] - eps:
            stack.pop()
        if stack:
            assert e["ts"] + e["dur"] <= stack[-1]["ts"] + stack[-1]["dur"] + eps, f"{e['name']} overlaps {stack[-1]['name']}"
        stack.append(e)
    json.dumps(doc, allow_nan=False)
    return xs


@pytest.fixture(scope="module")
def frames():
    from twin.runner import RunSpec, run

    reports = [run(RunSpec(platform="mps2-an386", tokens=4))]
    return reports, A.frames_from_reports(reports, A.predict_reports(reports))


@pytest.mark.qemu
def test_speedscope_export_of_a_real_run_validates(tmp_path, frames):
    reports, f = frames
    path = E.write_export(f, "run-0000", "speedscope", tmp_path / "p.speedscope.json")
    doc = json.loads(path.read_text())
    check_speedscope(doc)
    ins, cyc, cls = doc["profiles"]
    assert ins["endValue"] == reports[0]["instructions"]["total"]
    names = [doc["shared"]["frames"][s[-1]]["name"] for s in ins["samples"]]
    assert names == [x["name"] for x in reports[0]["functions"]]
    assert "mps2-an386" in cyc["name"]                  # the run's own platform predicted by default
    pred = f.predictions[f.predictions["board"] == "mps2-an386"].iloc[0]
    seconds = pred["ttft_s"] + 3 * pred["token_s"]
    assert cyc["endValue"] == pytest.approx(seconds * pred["clock_mhz"] * 1e6, rel=1e-9)
    assert cls["endValue"] == sum(sum(v.values()) for v in reports[0]["instructions"]["by_phase_class"].values())
    doc = E.speedscope(f, "run-0000", board="nucleo-l4r5zi")
    assert "nucleo-l4r5zi" in doc["profiles"][1]["name"]
    with pytest.raises(E.ExportError, match="no prediction for board 'nope'"):
        E.speedscope(f, "run-0000", board="nope")


@pytest.mark.qemu
def test_perfetto_export_of_a_real_run_is_a_valid_trace(tmp_path, frames):
    reports, f = frames
    path = E.write_export(f, "run-0000", "perfetto", tmp_path / "t.json")
    doc = json.loads(path.read_text())
    xs = check_chrome_trace(doc)
    by = {e["name"]: e for e in xs}
    decode = reports[0]["instructions"]["by_phase"]["decode"]
    assert [e["args"]["instructions"] for e in xs if e["cat"] == "decode"] == decode
    pred = f.predictions[f.predictions["board"] == "mps2-an386"].iloc[0]
    assert by["generate"]["dur"] == pytest.approx((pred["ttft_s"] + 3 * pred["token_s"]) * 1e6, rel=1e-9)
    assert by["prefill"]["dur"] == pytest.approx((pred["ttft_s"] - pred["token_s"]) * 1e6, rel=1e-9)
    assert by["token 0"]["dur"] == pytest.approx(pred["token_s"] * 1e6 * decode[0] / (sum(decode) / 4), rel=1e-9)
    # tokens are back to back after the prefill
    toks = [e for e in xs if e["cat"] == "decode"]
    assert toks[0]["ts"] == pytest.approx(by["prefill"]["dur"])
    for a, b in zip(toks, toks[1:], strict=False):
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"])


@pytest.mark.qemu
def test_perfetto_trace_processor_loads_the_trace(tmp_path, frames):
    tp_mod = pytest.importorskip(
        "perfetto.trace_processor",
        reason="perfetto not installed; its TraceProcessor downloads its binary on first use (no network in tests)")
    _, f = frames
    path = E.write_export(f, "run-0000", "perfetto", tmp_path / "t.json")
    try:
        tp = tp_mod.TraceProcessor(trace=str(path))
    except Exception as exc:           # no cached shell binary and no network
        pytest.skip(f"perfetto trace processor cannot start offline: {exc}")
    rows = list(tp.query("select name from slice order by ts"))
    tp.close()
    assert rows[0].name in ("generate", "prefill") and len(rows) == 2 + 4


def test_exports_of_synthetic_frames_and_refusals():
    f = A.synthetic_frames(4)
    check_speedscope(E.speedscope(f, 2))
    check_chrome_trace(E.chrome_trace(f, 2))
    g = A.Frames(f.runs, f.token_counts, f.functions, f.classes, f.predictions.iloc[0:0])
    doc = E.chrome_trace(g, 1)                                # no prediction: the platform's clock, CPI 1
    check_chrome_trace(doc)
    assert "one instruction per cycle" in doc["otherData"]["times"]
    assert len(E.speedscope(g, 1)["profiles"]) == 2           # no cycles profile without a prediction
    with pytest.raises(E.ExportError, match="no run '77'"):
        E.speedscope(f, "77")
    runs = f.runs.copy()
    runs.loc[0, "status"], runs.loc[0, "error"] = "failed", "hung"
    with pytest.raises(E.ExportError, match=r"failed \(hung\)"):
        E.chrome_trace(A.Frames(runs, f.token_counts, f.functions, f.classes, f.predictions), 1)
