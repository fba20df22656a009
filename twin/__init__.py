"""tinyllm-twin: a simulator-backed digital twin for quantized tiny LLMs on microcontrollers.

The packages are the stages of the data flow (docs/architecture.md), each importing only the ones
below it (checked: pyproject.toml's import-linter contract):

- ``twin.model``   model preparation: weights, importers, tokenizers, the image format, the host
                   reference, accuracy, memory fit
- ``twin.device``  the firmware build, the protocol and its transport, the device backends (QEMU, RTL)
- ``twin.profile`` the plugin's counts per phase, by class and function
- ``twin.runner``  one profiled run end to end (``run(RunSpec(...))``)
- ``twin.bench``   the workload suite and the bench workflow
- ``twin.cli``     the command line, a thin skin over all of it
- ``calibration``  (a package of its own) counts → time and energy, fitted on bench data

The names below are the public API; each is imported on first use.
"""

from __future__ import annotations

import importlib

_API = {
    "RunSpec": "twin.runner", "run": "twin.runner", "run_with_dump": "twin.runner",
    "Platform": "twin.platforms", "get_platform": "twin.platforms", "all_platforms": "twin.platforms",
    "load_model": "twin.model.importers", "QuantRecipe": "twin.model.image", "write_image": "twin.model.image",
    "read_image": "twin.model.image", "QuantReference": "twin.model.reference",
    "build_firmware": "twin.device.build", "Device": "twin.device.transport",
    "BenchSpec": "twin.bench.workflow", "bench": "twin.bench.workflow", "write_dataset": "twin.bench.workflow",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'twin' has no attribute {name!r}")
