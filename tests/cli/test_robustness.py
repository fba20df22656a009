"""Issue 8: never silently wrong, never a traceback, never a lost row.

Signals end the real `twin` CLI running a real QEMU; failed writes are real (RLIMIT_FSIZE makes a
write fail with EFBIG like a full disk); corrupt caches are real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TWIN = str(Path(sys.executable).with_name("twin"))


# --------------------------------------------------------------------------- A: signals


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    state, ppid = raw[raw.rindex(")") + 2:].split()[:2]
    return comm, state, int(ppid)


def _qemu_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[2] == pid and st[0].startswith("qemu-system") and st[1] != "Z":
                out.append(int(entry))
    return out


def _running(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _wait_for_qemu(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"twin exited ({proc.returncode}) before QEMU was seen"
        kids = _qemu_children(proc.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("QEMU did not start")


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_emulator_never_outlives_twin(tmp_path, sig):
    """A long `twin bench --port qemu`: the signal ends twin, and its QEMU within seconds (SIGTERM and
    SIGHUP through the CLI's handlers: a clean exit 128+signum; SIGKILL through PR_SET_PDEATHSIG)."""
    cmd = [TWIN, "bench", "--port", "qemu", "--platform", "mps2-an386", "--model", "none",
           "--scale", "3000", "-o", str(tmp_path / "b.csv")]
    log = (tmp_path / "log").open("w+")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    qemu = None
    try:
        qemu = _wait_for_qemu(proc)
        time.sleep(0.3)                   # well inside the run
        assert _running(qemu)
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=10)
        end = time.monotonic() + 5
        while _running(qemu) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _running(qemu), f"QEMU {qemu} still runs after {sig.name} to twin (exit {rc})"
        if sig != signal.SIGKILL:
            log.seek(0)
            text = log.read()
            assert rc == 128 + sig, (rc, text)
            assert "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if qemu is not None and _running(qemu):
            os.kill(qemu, signal.SIGKILL)
        log.close()


def test_spawn_child_dies_with_parent(tmp_path):
    """procguard.spawn in a parent that is SIGKILLed: the child (a sleep) goes too; process_group and a
    caller's preexec_fn still work."""
    script = (
        "import subprocess, sys, time\n"
        "from twin.device.procguard import spawn\n"
        "p = spawn(['sleep', '60'], process_group=0, preexec_fn=lambda: None)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _running(child)
        assert os.getpgid(child) == child          # process_group=0 honoured
        parent.kill()
        parent.wait()
        end = time.monotonic() + 5
        while _running(child) and time.monotonic() < end:
            time.sleep(0.02)
        assert not _running(child)
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


# --------------------------------------------------------------------------- B: atomic outputs


def _limited(limit_bytes: int):
    """preexec_fn: files this process writes may not grow past ``limit_bytes`` (EFBIG, like a full disk;
    Python ignores SIGXFSZ, so the write fails instead of killing the process)."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def _twin(args: list[str], *, limit: int | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run([TWIN, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limited(limit) if limit else None, env={**os.environ, **(env or {})})


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_image_on_a_full_disk_keeps_the_previous_image(tmp_path):
    """`twin image` of the built-in model (170 KB) where files may not exceed 100 KB: a one-line error,
    the previous image and its tokenizer byte for byte, no temporary left."""
    out = tmp_path / "m.twlm"
    r = _twin(["image", "--bits", "8", "-o", str(out)])          # the previous image, 8-bit
    assert r.returncode == 0, r.stderr
    before = out.read_bytes()
    tok_before = (tmp_path / "m.twlm.tokenizer.json").read_bytes()
    assert len(before) < 400_000
    r = _twin(["image", "--bits", "4", "-o", str(out)], limit=100 * 1024)
    assert "m.twlm" in _one_line_error(r)
    assert out.read_bytes() == before
    assert (tmp_path / "m.twlm.tokenizer.json").read_bytes() == tok_before
    assert _leftovers(tmp_path, {"m.twlm", "m.twlm.tokenizer.json"}) == []


def test_compare_chart_on_a_full_disk_keeps_the_previous_chart(tmp_path):
    out = tmp_path / "boards.png"
    out.write_bytes(b"previous chart")
    r = _twin(["compare", "--platforms", "nucleo-f746zg", "--json"])   # the counts cached: no QEMU below
    assert r.returncode == 0, r.stderr
    r = _twin(["compare", "--platforms", "nucleo-f746zg", "-o", str(out)], limit=2000)
    assert "boards.png" in _one_line_error(r)
    assert out.read_bytes() == b"previous chart"
    assert _leftovers(tmp_path, {"boards.png"}) == []


def test_quantize_chart_on_a_full_disk_keeps_the_previous_chart(tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good "
                    "fortune, must be in want of a wife.")
    out = tmp_path / "q.png"
    out.write_bytes(b"previous chart")
    r = _twin(["quantize", "--bits", "4", "--eval", str(text), "--max-tokens", "16", "-o", str(out)],
              limit=2000)
    _one_line_error(r)
    assert out.read_bytes() == b"previous chart"
    assert _leftovers(tmp_path, {"q.png", "eval.txt"}) == []


def test_calibration_file_on_a_full_disk_keeps_the_previous_file(tmp_path):
    from calibration.dataset import save_dataset
    from calibration.synthetic import bench_dataset, default_hidden

    ds = tmp_path / "bench.csv"
    save_dataset(bench_dataset(default_hidden(seed=3), n_workloads=12, seed=5,
                               boards={"stm32f4-disco": [168_000_000]}), ds)
    out = tmp_path / "cal.json"
    out.write_text('{"previous": true}\n')
    r = _twin(["calibrate", str(ds), "-o", str(out)], limit=500)
    _one_line_error(r)
    assert out.read_text() == '{"previous": true}\n'
    assert _leftovers(tmp_path, {"cal.json", "bench.csv"}) == []


@pytest.mark.parametrize("case", ["directory", "missing-parent", "unwritable"])
def test_bad_output_paths_fail_before_the_work(tmp_path, case):
    from click.testing import CliRunner

    from twin.cli.main import main

    if case == "directory":
        out = tmp_path
    elif case == "missing-parent":
        out = tmp_path / "no" / "such" / "m.twlm"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "m.twlm"
    text = tmp_path / "eval.txt"
    text.write_text("some text")
    for args in (["image", "-o", str(out)],
                 ["compare", "--platforms", "nucleo-f746zg", "-o", str(out)],
                 ["quantize", "--bits", "4", "--eval", str(text), "-o", str(out)]):
        started = time.monotonic()
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and r.exception is None or isinstance(r.exception, SystemExit), r.output
        assert "Traceback" not in r.output and str(out) in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) <= 3, r.output
        assert time.monotonic() - started < 5


def test_atomic_helpers_leave_nothing_on_error(tmp_path):
    from twin import atomic

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.open_atomic(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and _leftovers(tmp_path, {"f.txt"}) == []
    atomic.write_text(target, "new")
    atomic.write_bytes(tmp_path / "g.bin", b"\x00\x01")
    assert target.read_text() == "new" and (tmp_path / "g.bin").read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path, {"f.txt", "g.bin"}) == []
    with atomic.atomic_path(tmp_path / "c.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "c.png").read_bytes() == b"png"
    with pytest.raises(atomic.OutputPathError, match="is a directory"):
        atomic.check_output_path(tmp_path)
    with pytest.raises(atomic.OutputPathError, match="does not exist"):
        atomic.check_output_path(tmp_path / "x" / "y")


# --------------------------------------------------------------------------- C: corrupt caches


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache of its own (TWIN_CACHE) with the shared cache's plugin, so corrupting it hurts nobody."""
    import shutil

    from twin.device.build import cache_dir

    shared = cache_dir()
    cache = tmp_path / "cache"
    cache.mkdir()
    if (shared / "plugin").is_dir():
        shutil.copytree(shared / "plugin", cache / "plugin")
    monkeypatch.setenv("TWIN_CACHE", str(cache))
    return cache


def _run_json(*args) -> dict:
    import json

    from click.testing import CliRunner

    from twin.cli.main import main

    r = CliRunner().invoke(main, ["run", "--platform", "mps2-an386", "--tokens", "2", "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.qemu
def test_torn_cached_elf_is_rebuilt(private_cache):
    import hashlib

    first = _run_json()
    elf = Path(first["firmware"]["elf"])
    assert elf.is_relative_to(private_cache)
    good = elf.read_bytes()
    elf.write_bytes(good[: len(good) // 2])          # a torn copy under the right name
    again = _run_json()
    assert again["matches_reference"] and again["tokens"] == first["tokens"]
    assert len(elf.read_bytes()) == len(good)
    digest = elf.with_name(elf.name + ".sha256").read_text().strip()
    assert hashlib.sha256(elf.read_bytes()).hexdigest() == digest


@pytest.mark.qemu
def test_corrupt_cached_model_image_is_rewritten(private_cache):
    first = _run_json()
    (image,) = (private_cache / "images").glob("*.twlm")
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF                     # one flipped byte: the firmware's CRC says E_CRC
    image.write_bytes(bytes(data))
    again = _run_json()
    assert again["matches_reference"] and again["tokens"] == first["tokens"]
    assert image.read_bytes() != bytes(data)


# --------------------------------------------------------------------------- D: one-line errors


def _invoke(*args):
    from click.testing import CliRunner

    from twin.cli.main import main

    return CliRunner().invoke(main, list(args))


def _refused(r, *needles: str) -> str:
    """A non-zero exit with an error line (no traceback) that names each of ``needles``."""
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, r.output
    for n in needles:
        assert n in errors[0], r.output
    return errors[0]


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--platform", "mps2-an386", "--seed", "-1"], ("--seed", "-1")),
    (["run", "--platform", "mps2-an386", "--timeout", "0"], ("--timeout", "0")),
    (["run", "--platform", "mps2-an386", "--timeout", "nan"], ("--timeout", "nan")),
    (["demo", "--timeout", "0"], ("--timeout", "0")),
    (["bench", "--port", "qemu", "--platform", "mps2-an386", "--timeout", "0", "-o", "unused.csv"],
     ("--timeout", "0")),
    (["run", "--platform", "mps2-an386", "--temperature", "nan"], ("--temperature", "nan")),
    (["image", "--seed", "-1", "-o", "unused.twlm"], ("--seed", "-1")),
    (["predict", "--platform", "nucleo-f746zg", "--clock", "nan"], ("--clock", "nan")),
    (["predict", "--platform", "nucleo-f746zg", "--clock", "inf"], ("--clock", "inf")),
    (["predict", "--platform", "nucleo-f746zg", "--voltage", "nan", "--json"], ("--voltage", "nan")),
    (["predict", "--platform", "nucleo-f746zg", "--voltage", "1000"], ("--voltage", "1000")),
    (["predict", "--platform", "nucleo-f746zg", "--voltage", "-3.3"], ("--voltage", "-3.3")),
])
def test_bad_numbers_are_refused_in_one_line(args, needles):
    started = time.monotonic()
    _refused(_invoke(*args), *needles)
    assert time.monotonic() - started < 5          # before any emulator run


def test_voltage_check_is_shared_api():
    """The check predict uses; `twin bench --voltage` should use the same (twin.cli.main.SUPPLY_VOLTAGE)."""
    from calibration.energy import VoltageError, check_voltage
    from calibration.predict import PredictError, predict

    assert check_voltage(3.3) == 3.3 and check_voltage(None) is None
    for bad in (-3.3, 0.0, 1000.0, float("nan"), float("inf"), "x"):
        with pytest.raises(VoltageError, match="plausible supply range|not a number"):
            check_voltage(bad)
    with pytest.raises(PredictError, match="1000"):
        predict("nucleo-f746zg", voltage_v=1000.0)
    with pytest.raises(PredictError, match="nan"):
        predict("nucleo-f746zg", clock_mhz=float("nan"))


@pytest.fixture(scope="module")
def good_calibration() -> dict:
    from calibration.fit import calibrate
    from calibration.synthetic import bench_dataset, default_hidden

    df = bench_dataset(default_hidden(seed=3), n_workloads=20, seed=5, boards={"stm32f4-disco": [168_000_000]})
    return calibrate(df).to_dict()


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["cycles"].update(coef=dict.fromkeys(d["cycles"]["coef"], 0.0)), "every coefficient is 0"),
    (lambda d: d["cycles"].update(q="0.05"), "'q'"),
    (lambda d: d["cycles"]["coef"].update(n_alu="1.0"), "coef.n_alu"),
    (lambda d: d["cycles"]["cv"]["by_workload"].update(mape_percent="1.2"), "mape_percent"),
    (lambda d: d["cycles"].update(q=float("inf")), "'q'"),
])
def test_broken_calibration_files_are_refused_in_one_line(tmp_path, good_calibration, edit, needle):
    import copy
    import json

    d = copy.deepcopy(good_calibration)
    edit(d)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(d))
    started = time.monotonic()
    _refused(_invoke("predict", "--platform", "stm32f4-disco", "--calibration", str(path)), needle, "cal.json")
    assert time.monotonic() - started < 5


def _dataset(tmp_path, *, n_workloads=12, rows=None, edit=None) -> Path:
    from calibration.dataset import save_dataset
    from calibration.synthetic import bench_dataset, default_hidden

    df = bench_dataset(default_hidden(seed=3), n_workloads=n_workloads, seed=5,
                       boards={"stm32f4-disco": [168_000_000]})
    if rows is not None:
        df = df.iloc[rows].reset_index(drop=True)
    if edit is not None:
        edit(df)
    path = tmp_path / "bench.csv"
    save_dataset(df, path)
    return path


def test_infinite_count_names_its_column(tmp_path):
    def edit(df):
        df["n_mul"] = df["n_mul"].astype(float)
        df.loc[4, "n_mul"] = float("inf")
    ds = _dataset(tmp_path, edit=edit)
    _refused(_invoke("calibrate", str(ds), "-o", str(tmp_path / "cal.json")), "n_mul", "row 4")
    assert not (tmp_path / "cal.json").exists()


def test_calibrate_on_three_rows_warns_and_predicts_finite(tmp_path):
    """Three rows cannot give a 90% interval: the file says so (finite, strict JSON), calibrate warns
    with the reason, and a prediction from it has no "1e+30 tok/s" bound."""
    import json
    import math

    from calibration.predict import TwinCounts, predict_from_counts
    from twin.platforms import get_platform

    ds = _dataset(tmp_path, n_workloads=3, rows=[1, 3, 5])            # three decode rows
    out = tmp_path / "cal.json"
    r = _invoke("calibrate", str(ds), "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    warnings = json.loads(r.stdout)["warnings"]
    assert any("only 3 rows" in w and "NO coverage guarantee" in w for w in warnings), warnings
    d = json.loads(out.read_text(), parse_constant=_reject_constant)
    assert math.isfinite(d["cycles"]["q"]) and d["cycles"]["cv"]["interval"]["basis"] == "largest out-of-fold error"
    dec = {"alu": 4e5, "load": 2e5, "store": 5e4, "mul": 5e4, "div": 1e3, "branch": 1e5, "fp": 8e4, "simd": 2e4,
           "other": 1e4}
    counts = TwinCounts("stm32f4-disco", "m", "b0", "0" * 64, 5, 4, {c: 10 * v for c, v in dec.items()}, dec,
                        None, None, {"flash_bytes": 1000, "ram_static_bytes": 100, "arena_bytes": 100,
                                     "stack_peak_bytes": 100, "model_image_bytes": 1000}, True, "sp")
    pred = predict_from_counts(get_platform("stm32f4-disco"), counts, calibration=out)
    json.loads(json.dumps(pred), parse_constant=_reject_constant)
    tps = pred["tokens_per_second"]
    assert tps["high"] is None or tps["high"] < 1e6 * tps["value"]
    assert any("NO coverage guarantee" in n for n in pred["notes"])


def test_calibrate_warns_about_constant_cycles(tmp_path):
    import json

    def edit(df):
        df["cycles"] = 123456
    ds = _dataset(tmp_path, edit=edit)
    out = tmp_path / "cal.json"
    r = _invoke("calibrate", str(ds), "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert any("same cycle count" in w for w in summary["warnings"])
    assert any("cross-validated cycle error" in w for w in summary["warnings"])
    p = _twin(["calibrate", str(ds), "-o", str(out)])                  # and a person sees them
    assert p.returncode == 0 and "warning: every measured row has the same cycle count" in p.stderr, p.stderr


def test_calibrate_on_a_normal_bench_has_finite_interval_and_predicts_finite(tmp_path):
    import json
    import math

    ds = _dataset(tmp_path, n_workloads=13)          # like one `twin bench` (13 workloads, one board)
    out = tmp_path / "cal.json"
    r = _invoke("calibrate", str(ds), "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text(), parse_constant=_reject_constant)
    assert math.isfinite(d["cycles"]["q"]) and d["cycles"]["q"] < 1
    assert d["cycles"]["cv"]["interval"]["basis"] in ("split-conformal", "cross-validated")
    assert d["cycles"]["cv"]["prior_strength"] == 1.0
    weak = tmp_path / "weak.json"
    assert _invoke("calibrate", str(ds), "-o", str(weak), "--prior-strength", "0").exit_code == 0
    assert json.loads(weak.read_text())["cycles"]["cv"]["prior_strength"] == 0.0
    bad = _invoke("calibrate", str(ds), "-o", str(tmp_path / "bad.json"), "--prior-strength", "-1")
    assert bad.exit_code == 2 and "--prior-strength" in bad.output


def _reject_constant(name):
    raise ValueError(f"{name} in JSON")


# ------------------------------------------------------------------- calibration files round-trip

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_coef = st.one_of(st.floats(0.0, 1e3), st.floats(-1e-20, 0.0, exclude_max=True), st.just(-2.1e-27))


@st.composite
def _calibrations(draw):
    from calibration.cycles import FEATURES
    from calibration.store import ENERGY_FEATURES, PROVENANCE_FIELDS, Calibration, FittedModel

    coef = {f: draw(_coef) for f in FEATURES}
    if max(coef.values()) <= 0:
        coef["n_alu"] = 1.0
    q = draw(st.floats(0.0, 5.0))
    cycles = FittedModel(coef, draw(st.floats(0.01, 0.5)), q,
                         {"by_workload": {"mape_percent": draw(st.floats(0.0, 500.0)), "n_folds": 3}})
    energy = None
    if draw(st.booleans()):
        ecoef = {f: draw(st.one_of(st.floats(0.0, 1e-6), st.floats(-1e-30, 0.0, exclude_max=True)))
                 for f in ENERGY_FEATURES}
        ecoef["seconds"] = draw(st.floats(1e-4, 1.0))
        energy = FittedModel(ecoef, 0.1, draw(st.floats(0.0, 1.0)), {})
    prov = {k: "x" for k in PROVENANCE_FIELDS}
    cal = Calibration("cortex-m4f", ("stm32f4-disco",), cycles, prov, energy)
    return Calibration(cal.core, cal.boards, cal.cycles, prov, energy, cal.compute_id())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cal=_calibrations())
def test_any_calibration_written_loads_back(tmp_path, cal):
    """What save writes, load accepts: tiny negative solver noise clamped to 0, the id still matches."""
    import json

    from calibration import store

    path = store.save(cal, tmp_path / "cal.json")
    json.loads(path.read_text(), parse_constant=_reject_constant)
    back = store.load(path)
    assert back.cycles.coef == store.clamp_coef(cal.cycles.coef)
    assert all(v >= 0 for v in back.cycles.coef.values())
    assert back.id == back.compute_id()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(5, 16), seed=st.integers(0, 50), noise=st.sampled_from([0.0, 0.005, 0.3]),
       constant=st.booleans(), residual=st.sampled_from(["off", "auto"]))
def test_any_fitted_calibration_round_trips(tmp_path, n, seed, noise, constant, residual):
    import dataclasses

    from calibration import fit_calibration, store
    from calibration.synthetic import bench_dataset, default_hidden

    hidden = dataclasses.replace(default_hidden(seed=seed), noise=noise)
    df = bench_dataset(hidden, n_workloads=n, seed=seed, boards={"stm32f4-disco": [48_000_000, 168_000_000]})
    if constant:
        df["cycles"] = 1000
    summary = fit_calibration(df, tmp_path / "cal.json", residual=residual)
    assert store.load(tmp_path / "cal.json").id == summary["id"]


@pytest.mark.parametrize("case", ["directory", "missing-parent"])
def test_calibrate_checks_its_output_path(tmp_path, case):
    ds = _dataset(tmp_path)
    out = tmp_path if case == "directory" else tmp_path / "no" / "cal.json"
    _refused(_invoke("calibrate", str(ds), "-o", str(out)), str(out))
