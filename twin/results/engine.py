"""The matrix engine: platforms × models × bit widths × prompt lengths (× tokens) of profiled runs, each
with the predictions of every catalog board it stands for, landing in the results store.

Workers only compute (``profile_cell``: one ``twin.runner.run`` plus ``calibration.predict``'s what-if,
in a process of a local ``ProcessPoolExecutor`` — one per core — or of a Dask cluster); the parent
process is the store's one writer and records each cell as it finishes, in one transaction. A re-run
skips the cells the store has (resumable); a cell that fails (a firmware error, a hung emulator, a model
that does not fit, a worker that died) is stored as failed with its error and the batch goes on.
Concurrent sessions share nothing mutable but the content-addressed caches, which are written
atomically (twin/device/build.py, twin/runner.py), and each emulator's port, which the host binds itself.
docs/results.md has the details.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import multiprocessing
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from .store import ResultsStore, utc_now

# Prompt text for a prompt of N tokens: Austen (public domain), the opening of Pride and Prejudice.
CORPUS = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
          "in want of a wife. However little known the feelings or views of such a man may be on his first "
          "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that "
          "he is considered the rightful property of some one or other of their daughters. My dear Mr. Bennet, "
          "said his lady to him one day, have you heard that Netherfield Park is let at last? Mr. Bennet "
          "replied that he had not. But it is, returned she; for Mrs. Long has just been here, and she told me "
          "all about it. Mr. Bennet made no answer. Do you not want to know who has taken it? cried his wife "
          "impatiently. You want to tell me, and I have no objection to hearing it.")


class EngineError(ValueError):
    """A matrix that cannot be run as asked; the message says what was wrong."""


@dataclass(frozen=True)
class Cell:
    """One profiled run of the matrix. ``bits`` is the built-in model's width (None for an image: its
    quantization is its own); ``prompt_tokens`` the prompt's length in tokens, BOS included (None: the
    default prompt, "Once upon a time")."""
    platform: str
    model: str = "builtin"
    bits: int | None = 4
    prompt_tokens: int | None = None
    tokens: int = 16
    seed: int = 0
    kv_cache: str = "f32"
    group_size: int = 32
    symmetric: bool = True
    kernels: str | None = None        # None: the platform's kernel set
    device: str | None = None         # a board of the hardware map: the request runs on it too (cycles)
    mem_traffic: bool = True          # the predictions' flash loads (costs little emulator speed)
    timeout: float = 120.0            # seconds for the emulator run (not part of the key)

    @functools.cached_property
    def key(self) -> str:
        """Stable across processes and sessions: the parameters that shape the result, and an image's
        content hash (the same path with other bytes is another cell)."""
        if self.model == "builtin":
            model = "builtin"
            quant = f"q{self.bits}g{self.group_size}{'' if self.symmetric else 'a'}"
        else:
            model = f"{Path(self.model).name}@{_file_sha256(self.model)[:16]}"
            quant = "image"
        parts = [self.platform, model, quant, f"p{'default' if self.prompt_tokens is None else self.prompt_tokens}",
                 f"t{self.tokens}", f"s{self.seed}", f"kv-{self.kv_cache}"]
        if self.kernels:
            parts.append(f"k-{self.kernels}")
        if self.device:
            parts.append(f"dev-{self.device}")
        if not self.mem_traffic:
            parts.append("no-traffic")
        return "/".join(parts)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _file_sha256(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return _sha256_of(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def matrix(platforms: Iterable[str], models: Iterable[str] = ("builtin",), bits: Iterable[int] = (4,),
           prompt_lengths: Iterable[int | None] = (None,), tokens: Iterable[int] | int = 16, **common) -> list[Cell]:
    """The cells of platforms × models × bits × prompt lengths × tokens (``common``: other Cell fields).
    An image is one cell per platform × prompt length × tokens: its bit widths are its own."""
    tokens = [tokens] if isinstance(tokens, int) else list(tokens)
    cells: list[Cell] = []
    seen: set[str] = set()
    for p in platforms:
        for m in models:
            for b in (bits if m == "builtin" else (None,)):
                for n in prompt_lengths:
                    for t in tokens:
                        c = Cell(platform=p, model=m, bits=None if b is None else int(b), prompt_tokens=n,
                                 tokens=int(t), **common)
                        if c.key not in seen:
                            seen.add(c.key)
                            cells.append(c)
    return cells


# -------------------------------------------------------------------------------------------------
# Prompts of a given length
# -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def prompt_text(model: str, n: int) -> str:
    """A prompt that the model's tokenizer turns into exactly ``n`` tokens (BOS included): a prefix of
    CORPUS, cut at a word boundary where one gives ``n``. Byte-level models (no tokenizer): BOS and
    n − 1 bytes (folded into the vocabulary when it is too small for the letters)."""
    from twin.model import modelgen
    from twin.runner import model_tokenizer

    if n < 1:
        raise EngineError(f"prompt length {n}: a prompt has at least one token (BOS)")
    tokenizer = model_tokenizer(model)
    if tokenizer is None:
        vocab = _vocab_size(model)
        fits = vocab - 1 - modelgen.BYTE_OFFSET          # the largest byte with an id
        if fits < 0:
            raise EngineError(f"{model}: a vocabulary of {vocab} holds no byte, so no prompt longer than BOS")
        text = (CORPUS * (n // len(CORPUS) + 1))[: n - 1]
        if fits < 127:
            text = "".join(chr(ord(ch) % (fits + 1)) for ch in text)
        return text
    encode = tokenizer.encode
    if len(encode("")) == n:
        return ""
    text = CORPUS
    while len(encode(text)) < n:
        text += " " + CORPUS
    lo, hi = 0, len(text)               # the shortest prefix with at least n tokens (counts grow with length)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(encode(text[:mid])) >= n:
            hi = mid
        else:
            lo = mid + 1
    exact = [i for i in range(lo, min(lo + 64, len(text)) + 1) if len(encode(text[:i])) == n]
    if not exact:       # merges made the count jump past n here: any prefix that gives n
        exact = [i for i in range(1, len(text) + 1) if len(encode(text[:i])) == n]
    if not exact:
        raise EngineError(f"{model}: no prefix of the prompt text gives exactly {n} tokens")
    boundary = [i for i in exact if i == len(text) or not text[i].isalnum()]
    return text[: boundary[-1] if boundary else exact[0]]


def _vocab_size(model: str) -> int:
    from twin.model.image import read_image

    if model == "builtin":
        from twin.model import modelgen

        return modelgen.builtin_model().config.vocab_size
    return read_image(Path(model).read_bytes()).config.vocab_size


def run_spec(cell: Cell):
    """The twin.runner.RunSpec of a cell (RTL platforms: the twin alone, as predictions' counts)."""
    from twin.runner import DEFAULT_PROMPT, RunSpec

    prompt = DEFAULT_PROMPT if cell.prompt_tokens is None else prompt_text(cell.model, cell.prompt_tokens)
    return RunSpec(platform=cell.platform, model=cell.model, bits=4 if cell.bits is None else cell.bits,
                   group_size=cell.group_size, symmetric=cell.symmetric, kv_cache=cell.kv_cache, prompt=prompt,
                   tokens=cell.tokens, seed=cell.seed, timeout=cell.timeout, mem_traffic=cell.mem_traffic,
                   kernels=cell.kernels, board=False)


# -------------------------------------------------------------------------------------------------
# The worker: one cell, computed (never written)
# -------------------------------------------------------------------------------------------------
def profile_cell(cell: Cell) -> dict:
    """Run one cell and predict the catalog boards it stands for. Never raises for the cell's own
    failure: returns {key, spec, report, predictions, error, meta} with ``error`` set instead."""
    started = time.perf_counter()
    spec = cell.to_dict()
    report, predictions, error = None, [], None
    meta: dict = {"host": socket.gethostname(), "git_commit": git_commit()}
    try:
        rs = run_spec(cell)
        spec["prompt"] = rs.prompt
        meta.update(_provenance(rs))
        from twin.runner import run

        report = run(rs)
        if cell.device:                        # the same request on the board: its tokens and cycles
            from twin.runner import with_board

            report = with_board(report, cell.device, rs)
        predictions, notes = predictions_for(report, meta.get("model_sha256", ""))
        if notes:
            meta["prediction_notes"] = notes
    except Exception as exc:       # the cell's failure is its result
        error, report, predictions = one_line(exc), None, []
    meta["created_at"] = utc_now()
    meta["wall_seconds"] = round(time.perf_counter() - started, 3)
    return {"key": cell.key, "spec": spec, "report": report, "predictions": predictions, "error": error,
            "meta": meta}


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def predictions_for(report: dict, image_sha: str = "") -> tuple[list[dict], list[str]]:
    """``predict_from_counts`` for every catalog board whose counts come from the report's platform and
    kernels (as `twin demo`'s what-if); the boards that could not be predicted, with why."""
    from calibration.predict import PredictError, counts_from_report, counts_kernels, predict_from_counts
    from twin.platforms import all_platforms

    counts = counts_from_report(report, image_sha)
    out, notes = [], []
    for plat in all_platforms().values():
        if plat.counts_platform != counts.platform:
            continue
        if counts_kernels(plat) != counts.kernels:   # e.g. an M0+ cannot run the proxy's DSP kernels
            notes.append(f"{plat.id}: its core cannot run {counts.kernels} kernels")
            continue
        try:
            out.append(predict_from_counts(plat, counts))
        except PredictError as exc:
            notes.append(f"{plat.id}: {exc}")
    return out, notes


def _provenance(rs) -> dict:
    from twin.device.build import build_firmware
    from twin.platforms import get_platform, with_kernels

    platform = with_kernels(get_platform(rs.platform), rs.kernels)
    meta = {"model_sha256": _image_sha256(rs.model, rs.bits, rs.group_size, rs.symmetric, rs.kv_cache,
                                          _file_sha256(rs.model) if rs.model != "builtin" else ""),
            "recipe": (f"q{rs.bits}g{rs.group_size}{'' if rs.symmetric else 'a'}" if rs.model == "builtin"
                       else "image"),
            "qemu_version": qemu_version(platform.emulator.binary) if platform.emulator else None}
    fw = build_firmware(platform)
    meta.update(build_id=fw.build_id, compiler=fw.compiler, cflags=fw.cflags)
    return meta


@functools.lru_cache(maxsize=64)
def _image_sha256(model: str, bits: int, group_size: int, symmetric: bool, kv_cache: str, file_sha: str) -> str:
    """The loaded image's sha256 (the built-in model quantized as asked, or the file's bytes)."""
    if model != "builtin":
        return file_sha
    from twin.runner import RunSpec, model_image

    _, data, _ = model_image(RunSpec(platform="-", bits=bits, group_size=group_size, symmetric=symmetric,
                                     kv_cache=kv_cache))
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=8)
def qemu_version(binary: str) -> str | None:
    """The first line of ``BINARY --version``, or None when it cannot be run."""
    import shutil

    path = shutil.which(binary)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit (``git rev-parse HEAD`` in the source tree), or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


# -------------------------------------------------------------------------------------------------
# The parent: schedule, record, report progress
# -------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a batch is (passed to ``on_progress`` after each recorded cell, and once at the start)."""
    total: int                   # cells asked for
    skipped: int = 0             # already in the store
    ok: int = 0
    failed: int = 0
    mismatched: int = 0          # ok, but the tokens differ from the host reference
    started: float = field(default_factory=time.perf_counter)
    last_key: str | None = None
    last_error: str | None = None

    @property
    def to_run(self) -> int:
        return self.total - self.skipped

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def eta(self) -> float | None:
        if not self.finished:
            return None
        return self.elapsed / self.finished * (self.to_run - self.finished)


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return max(os.cpu_count() or 1, 1)


def run_matrix(cells: Iterable[Cell], db: ResultsStore | os.PathLike | str, workers: int | None = None,
               scheduler=None, on_progress: Callable[[Progress], None] | None = None, *,
               retry_failed: bool = False) -> dict:
    """Run the cells the store does not have yet and record each as it finishes; returns a summary.

    ``workers``: local worker processes (default one per core). ``scheduler``: a Dask scheduler address
    (``tcp://HOST:PORT``), a cluster (e.g. ``LocalCluster``) or a ``Client`` — the cells run on its
    workers instead. ``retry_failed``: also run the cells stored as failed (default: they count as done)."""
    store = db if isinstance(db, ResultsStore) else ResultsStore(db)
    try:
        unique: dict[str, Cell] = {}
        for c in cells:
            unique.setdefault(c.key, c)
        have = store.keys() if not retry_failed else store.keys("ok")
        todo = [c for k, c in unique.items() if k not in have]
        progress = Progress(total=len(unique), skipped=len(unique) - len(todo))
        if workers is not None and workers < 1:
            raise EngineError(f"workers {workers}: give at least 1")
        boards = sorted({c.device for c in todo if c.device})
        if boards and scheduler is not None:
            raise EngineError(f"cells on the board(s) {', '.join(boards)} run on this machine, where the board is "
                              "plugged in: drop the Dask scheduler")
        n_workers = 1 if boards else (workers or default_workers())   # a board is one device: one at a time
        if on_progress:
            on_progress(progress)
        failures = []
        results = _dask_results(todo, scheduler) if scheduler is not None else _pool_results(todo, n_workers)
        for res in results:
            store.record(res["key"], res["spec"], res["report"], res["predictions"], res["error"], res["meta"])
            progress.last_key, progress.last_error = res["key"], res["error"]
            if res["error"] is None:
                progress.ok += 1
                progress.mismatched += not res["report"]["matches_reference"]
            else:
                progress.failed += 1
                failures.append({"cell_key": res["key"], "error": res["error"]})
            if on_progress:
                on_progress(progress)
        wall = progress.elapsed
        return {"db": str(store.path), "cells": progress.total, "skipped": progress.skipped,
                "ran": progress.finished, "ok": progress.ok, "failed": progress.failed,
                "mismatched": progress.mismatched, "wall_seconds": round(wall, 3),
                "profiles_per_hour": round(progress.finished / wall * 3600) if progress.finished and wall else None,
                "backend": "dask" if scheduler is not None else "pool",
                "workers": None if scheduler is not None else n_workers, "failures": failures}
    finally:
        if store is not db:
            store.close()


def _failed(cell: Cell, error: str) -> dict:
    return {"key": cell.key, "spec": cell.to_dict(), "report": None, "predictions": [], "error": error,
            "meta": {"host": socket.gethostname(), "git_commit": git_commit(), "created_at": utc_now()}}


def _pool_results(cells: list[Cell], workers: int) -> Iterator[dict]:
    """Results as they finish from a local process pool. A worker process that dies breaks the pool:
    the cells it took down are run again, each alone; one that kills its worker again is failed."""
    if not cells:
        return
    # fork: the workers start with the parent's imports (numpy, the twin) and need no importable
    # __main__; they are forked before the pool's manager thread starts and never touch the store
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    suspects: list[Cell] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)), mp_context=ctx) as ex:
        futures = {ex.submit(profile_cell, c): c for c in cells}
        try:
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    suspects.append(cell)
                except Exception as exc:           # e.g. a result that cannot be pickled
                    yield _failed(cell, f"the worker could not return the result: {one_line(exc)}")
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
    for cell in suspects:       # alone, so a crash names its cell
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
            try:
                yield ex.submit(profile_cell, cell).result()
            except BrokenProcessPool:
                yield _failed(cell, "the worker process died while profiling this cell (killed, or out of "
                                    "memory); run it alone with `twin run` to see why")


def _dask_results(cells: list[Cell], scheduler) -> Iterator[dict]:
    """Results as they finish from a Dask cluster (dask.distributed)."""
    try:
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
    except ImportError:
        raise EngineError("a Dask scheduler needs dask.distributed: pip install 'tinyllm-twin[engine]'") from None
    if not cells:
        return
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout=10) if own else scheduler
    except (OSError, ValueError, TypeError) as exc:     # unreachable, or not an address (tcp://HOST:PORT)
        raise EngineError(f"Dask scheduler {scheduler}: {one_line(exc)}") from None
    try:
        futures = {}
        for c in cells:
            f = client.submit(profile_cell, c, pure=False,
                              key=f"twin-cell-{hashlib.sha256(c.key.encode()).hexdigest()[:16]}-{os.getpid()}"
                                  f"-{time.monotonic_ns()}")
            futures[f.key] = (f, c)
        for fut in dask_completed([f for f, _ in futures.values()]):
            _, cell = futures.pop(fut.key)
            try:
                yield fut.result()
            except Exception as exc:      # KilledWorker, a lost connection, ...
                yield _failed(cell, f"Dask: {one_line(exc)}")
            finally:
                fut.release()
    finally:
        for f, _ in futures.values():
            f.cancel()
        if own:
            client.close()

