"""The boosted residual of a calibration, as plain data: export, validation and a numpy evaluator.

``ResidualBoosted`` (calibration.estimators) predicts ``linear × (1 + r(mix))``, ``r`` a
scikit-learn ``GradientBoostingRegressor`` on the class mix.  A calibration file cannot hold a
pickle (it must be safe to load and readable), so ``r`` is written as what it is: a baseline, a
learning rate and, per tree, the five arrays of a binary regression tree::

    r(m) = init + learning_rate × Σ_trees value[leaf(tree, m)]
    leaf: from node 0, go to children_left[node] if m[feature[node]] <= threshold[node]
          else children_right[node], until children_left[node] == -1
          (a leaf has children -1, -1 and feature -1; its threshold is unused)

``m`` = ``mix_inputs(X)``: each feature as a fraction of the row's instruction count, then
log10(instruction count) (names in ``INPUT_NAMES``); like scikit-learn, ``m`` is rounded to float32
before the comparisons, so a loaded residual reproduces the fitted one to float rounding.

``export_residual`` refuses any other estimator type (naming it); ``check_block`` raises
``ResidualBlockError`` naming the first broken field (``store`` turns it into a
``CalibrationFileError``); ``StoredResidual`` evaluates a checked block.
"""

from __future__ import annotations

import math

import numpy as np

from .cycles import CLASS_FEATURES, FEATURES

RESIDUAL_VERSION = 1
KIND = "gradient_boosting"
INPUTS = "mix-v1"
INPUT_NAMES: tuple[str, ...] = (*(f"{f}/n_instructions" for f in FEATURES), "log10(n_instructions)")
TREE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value")
LEAF = -1
LEAF_FEATURES = (LEAF, -2)        # a leaf's unused feature: -1 in our files, -2 as scikit-learn keeps it


class ResidualBlockError(ValueError):
    """A residual cannot be stored, or a stored residual block is malformed (the message names the field)."""


def mix_inputs(X: np.ndarray) -> np.ndarray:
    """Scale-free description of each row: every feature as a fraction of the instruction count
    (the sum of the class counts), then log10 of that count (1 for an empty row)."""
    X = np.asarray(X, dtype=float)
    total = X[:, : len(CLASS_FEATURES)].sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    return np.column_stack([X / total, np.log10(total)])


# ------------------------------------------------------------------------------------- export
def check_storable_type(estimator) -> None:
    """Raise ``ResidualBlockError`` naming the type unless it is a GradientBoostingRegressor."""
    from sklearn.ensemble import GradientBoostingRegressor

    if type(estimator) is not GradientBoostingRegressor:
        kind = type(estimator)
        raise ResidualBlockError(
            f"cannot store a residual of type {kind.__module__}.{kind.__qualname__} in a calibration file: "
            "only sklearn.ensemble.GradientBoostingRegressor (the ResidualBoosted default) is "
            "written as plain trees (no pickles in calibration files)")


def export_residual(estimator) -> dict:
    """The JSON block of a fitted ``GradientBoostingRegressor`` (the default residual of
    ``ResidualBoosted``); any other type raises ``ResidualBlockError`` naming it."""
    from sklearn.dummy import DummyRegressor

    check_storable_type(estimator)
    name = type(estimator).__name__
    if not hasattr(estimator, "estimators_"):
        raise ResidualBlockError(f"cannot store an unfitted {name}")
    stages = estimator.estimators_
    if stages.ndim != 2 or stages.shape[1] != 1:
        raise ResidualBlockError(f"cannot store a {name} with {stages.shape[1]} trees per stage (need 1)")
    if estimator.n_features_in_ != len(INPUT_NAMES):
        raise ResidualBlockError(f"the {name} was fitted on {estimator.n_features_in_} inputs, not the "
                                 f"{len(INPUT_NAMES)} of the class mix ({INPUTS})")
    init = estimator.init_
    if isinstance(init, str) and init == "zero":
        baseline = 0.0
    elif type(init) is DummyRegressor:
        const = np.asarray(init.constant_, dtype=float).ravel()
        if const.size != 1:
            raise ResidualBlockError(f"cannot store a {name} whose init predicts {const.size} outputs")
        baseline = float(const[0])
    else:
        raise ResidualBlockError(f"cannot store a {name} whose init estimator is a "
                                 f"{type(init).__name__}: only the default (a constant) or 'zero'")
    trees = []
    for stage in stages[:, 0]:
        t = stage.tree_
        if t.n_outputs != 1 or t.value.shape[1:] != (1, 1):
            raise ResidualBlockError(f"cannot store a tree with value shape {t.value.shape}")
        internal = t.children_left != LEAF
        trees.append({
            "children_left": [int(v) for v in t.children_left],
            "children_right": [int(v) for v in t.children_right],
            # leaves carry scikit-learn's placeholders (-2); the file says -1 / 0.0: unused
            "feature": [int(f) if i else LEAF for f, i in zip(t.feature, internal, strict=True)],
            "threshold": [float(v) if i else 0.0 for v, i in zip(t.threshold, internal, strict=True)],
            "value": [float(v) for v in t.value[:, 0, 0]],
        })
    return {"version": RESIDUAL_VERSION, "kind": KIND, "inputs": INPUTS, "input_names": list(INPUT_NAMES),
            "combine": "cycles = linear * (1 + residual)", "init": baseline,
            "learning_rate": float(estimator.learning_rate), "trees": trees}


# ------------------------------------------------------------------------------------- validation
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_block(d: object, field: str = "cycles.residual") -> None:
    """Raise ``ResidualBlockError`` naming the first broken field of a residual block."""
    if not isinstance(d, dict):
        raise ResidualBlockError(f"field '{field}' must be an object (or null: no residual)")
    version = d.get("version")
    if version != RESIDUAL_VERSION:
        raise ResidualBlockError(f"field '{field}.version' is {version!r}; this twin reads residual "
                                 f"version {RESIDUAL_VERSION}")
    if d.get("kind") != KIND:
        raise ResidualBlockError(f"field '{field}.kind' is {d.get('kind')!r}; this twin evaluates {KIND!r}")
    if d.get("inputs") != INPUTS:
        raise ResidualBlockError(f"field '{field}.inputs' is {d.get('inputs')!r}; this twin computes {INPUTS!r}")
    if d.get("input_names") is not None and tuple(d["input_names"]) != INPUT_NAMES:
        raise ResidualBlockError(f"field '{field}.input_names' differs from this twin's {list(INPUT_NAMES)}")
    if not _is_number(d.get("init")):
        raise ResidualBlockError(f"field '{field}.init' must be a finite number, got {d.get('init')!r}")
    lr = d.get("learning_rate")
    if not _is_number(lr) or lr <= 0:
        raise ResidualBlockError(f"field '{field}.learning_rate' must be a finite number > 0, got {lr!r}")
    trees = d.get("trees")
    if not isinstance(trees, list):
        raise ResidualBlockError(f"field '{field}.trees' must be a list of trees")
    for i, tree in enumerate(trees):
        _check_tree(tree, f"{field}.trees[{i}]")


def _check_tree(t: object, field: str) -> None:
    if not isinstance(t, dict):
        raise ResidualBlockError(f"field '{field}' must be an object with {list(TREE_ARRAYS)}")
    for name in TREE_ARRAYS:
        if not isinstance(t.get(name), list):
            raise ResidualBlockError(f"field '{field}.{name}' must be a list")
    n = len(t["children_left"])
    if n == 0:
        raise ResidualBlockError(f"field '{field}.children_left' is empty: a tree has at least one node")
    for name in TREE_ARRAYS[1:]:
        if len(t[name]) != n:
            raise ResidualBlockError(f"field '{field}.{name}' has {len(t[name])} entries, "
                                     f"children_left has {n}: one per node")
    left, right, feature = t["children_left"], t["children_right"], t["feature"]
    n_inputs = len(INPUT_NAMES)
    for node in range(n):
        lo, hi = left[node], right[node]
        for name, child in (("children_left", lo), ("children_right", hi)):
            if not _is_int(child):
                raise ResidualBlockError(f"field '{field}.{name}[{node}]' must be an integer, got {child!r}")
        if (lo == LEAF) != (hi == LEAF):
            raise ResidualBlockError(f"field '{field}.children_left[{node}]' / 'children_right[{node}]': "
                                     f"a node has two children or none ({LEAF}), got {lo}, {hi}")
        if not _is_number(t["value"][node]):
            raise ResidualBlockError(f"field '{field}.value[{node}]' must be a finite number, "
                                     f"got {t['value'][node]!r}")
        if not _is_number(t["threshold"][node]):
            raise ResidualBlockError(f"field '{field}.threshold[{node}]' must be a finite number, "
                                     f"got {t['threshold'][node]!r}")
        if lo == LEAF:
            if feature[node] not in LEAF_FEATURES or not _is_int(feature[node]):
                raise ResidualBlockError(f"field '{field}.feature[{node}]' is {feature[node]!r}: node {node} "
                                         f"is a leaf, its feature must be {LEAF} (unused)")
            continue
        for name, child in (("children_left", lo), ("children_right", hi)):
            # children come after their parent (scikit-learn's order): no cycles, every walk ends
            if not node < child < n:
                raise ResidualBlockError(f"field '{field}.{name}[{node}]' is {child}: child index out of "
                                         f"range (must be in {node + 1}..{n - 1}, after its parent)")
        f = feature[node]
        if not _is_int(f) or not 0 <= f < n_inputs:
            raise ResidualBlockError(f"field '{field}.feature[{node}]' is {f!r}: must be an input index "
                                     f"in 0..{n_inputs - 1}")


# ------------------------------------------------------------------------------------- evaluation
class StoredResidual:
    """Evaluates a checked residual block: ``correction(X)`` = r(mix_inputs(X)) per row of the
    FEATURES matrix ``X``; the cycle prediction is ``(X @ coef) * (1 + correction(X))``."""

    def __init__(self, block: dict):
        check_block(block)
        self.init = float(block["init"])
        self.learning_rate = float(block["learning_rate"])
        self.trees = [tuple(np.asarray(t[k], dtype=np.int64 if k in ("children_left", "children_right",
                                                                    "feature") else np.float64)
                            for k in TREE_ARRAYS) for t in block["trees"]]

    def __len__(self) -> int:
        return len(self.trees)

    def raw(self, inputs: np.ndarray) -> np.ndarray:
        """r on a matrix of mix inputs (rounded to float32 first, as scikit-learn does)."""
        m = np.asarray(inputs, dtype=np.float32).astype(np.float64)
        rows = np.arange(m.shape[0])
        out = np.full(m.shape[0], self.init)
        for left, right, feature, threshold, value in self.trees:
            node = np.zeros(m.shape[0], dtype=np.int64)
            active = left[node] != LEAF
            while active.any():
                at = node[active]
                go_left = m[rows[active], feature[at]] <= threshold[at]
                node[active] = np.where(go_left, left[at], right[at])
                active = left[node] != LEAF
            out += self.learning_rate * value[node]
        return out

    def correction(self, X: np.ndarray) -> np.ndarray:
        return self.raw(mix_inputs(np.atleast_2d(np.asarray(X, dtype=float))))
