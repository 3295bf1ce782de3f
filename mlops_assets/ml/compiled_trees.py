"""Fitted tree ensembles and the project's composite models as packed NumPy arrays, for small predicts.

For 1..64 rows, `HistGradientBoostingRegressor.predict` spends its time in input validation and in
one OpenMP parallel region per tree (300 of them for a 6-booster x 50-tree `ridge_boost`), not in the
trees: 32 rows cost what 1 row costs. `compile_model` reads the fitted node arrays once, packs every
tree of every booster of a model into flat arrays (internal nodes first, then leaves; a leaf points
to itself) and evaluates rows with a few vectorised steps per tree level, all trees at once. The
steps around the trees (scalers, ridge, PCA, the project's feature transformers) become the same
NumPy arithmetic scikit-learn runs, without its per-call checks.

Sums run in scikit-learn's order (the baseline, then the trees in boosting order), so results agree
bit for bit in practice; `parity_report` measures the difference instead of assuming it. What is not
understood (categorical splits, classifiers, other estimators) is refused: `compile_model` returns
None and callers keep `predict`. Pure NumPy at prediction time; scikit-learn is read only to compile.

A model pipeline's own estimators take part without this module knowing them: an estimator with a
`compile_predict(compiler)` method (a transformer: `compile_transform(compiler)`) returns its
compiled function and a description, built from its fitted parts with the `Compiler` it is given
(e.g. `mlops_assets.atmos.estimators`), and raises `NotCompilable` for what it cannot do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Transform = Callable[[Any], np.ndarray]

#: Above this many (row x internal node) decisions, walk level by level instead: it needs memory for
#: (rows x trees) pointers only; below it both take about the same time (measured on 2 cores).
_DECIDE_ALL_LIMIT = 400_000


class NotCompilable(ValueError):
    """The estimator (or a part of it) has no exact packed equivalent here; the message says why."""


@dataclass(frozen=True, eq=False)
class PackedTrees:
    """All trees of `n_boosters` single-output gradient-boosting regressors, packed together.

    Node arrays have one entry per packed node: internal nodes occupy `[0, n_internal)`, leaves
    the rest. A leaf has threshold +inf, missing-goes-left and both children set to itself, so
    walking `depth` levels from every root lands every tree on its leaf. Boosters with fewer
    trees are padded with single-leaf trees of value 0.0 (adding +0.0 changes no sum).
    """

    feature: np.ndarray  # (n_nodes,) intp
    threshold: np.ndarray  # (n_nodes,) float64
    missing_left: np.ndarray  # (n_nodes,) bool
    left: np.ndarray  # (n_nodes,) intp
    right: np.ndarray  # (n_nodes,) intp
    step_left: np.ndarray  # (n_nodes,) intp, right - left: next = right - go_left * step_left
    value: np.ndarray  # (n_nodes,) float64, read at leaves only
    roots: np.ndarray  # (n_boosters * n_trees,) intp, booster-major
    baseline: np.ndarray  # (n_boosters,) float64
    exp_link: np.ndarray  # (n_boosters,) bool: the booster's prediction is exp(raw)
    n_internal: int
    n_trees: int
    depth: int
    n_features: int

    @property
    def n_boosters(self) -> int:
        return len(self.baseline)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n_rows, n_boosters): each booster's `predict` for float64 rows `X`."""
        X = as_rows(X, self.n_features)
        if len(X) * self.n_internal <= _DECIDE_ALL_LIMIT:
            leaves = self._leaves_deciding_all(X)
        else:
            leaves = self._leaves_level_by_level(X)
        n_rows = len(X)
        sums = np.empty((n_rows, self.n_boosters, self.n_trees + 1))
        sums[:, :, 0] = self.baseline
        sums[:, :, 1:] = self.value[leaves].reshape(n_rows, self.n_boosters, self.n_trees)
        # Sequential sums (np.add.accumulate never reorders), as scikit-learn's `raw += tree`.
        raw = np.ascontiguousarray(np.cumsum(sums, axis=2)[:, :, -1])
        if self.exp_link.any():
            raw[:, self.exp_link] = np.exp(raw[:, self.exp_link])
        return raw

    def _leaves_deciding_all(self, X: np.ndarray) -> np.ndarray:
        """Decide every internal node for every row first, then only follow pointers per level."""
        n_rows, n_nodes, n_internal = len(X), len(self.value), self.n_internal
        values = X[:, self.feature[:n_internal]]
        go_left = values <= self.threshold[:n_internal]
        if np.isnan(X).any():
            go_left |= np.isnan(values) & self.missing_left[:n_internal]
        following = np.empty((n_rows, n_nodes), dtype=np.intp)
        following[:, n_internal:] = self.left[n_internal:]
        # right - go_left * (right - left): several times faster than np.where on broadcast operands.
        inner = following[:, :n_internal]
        np.multiply(go_left, self.step_left[:n_internal], out=inner)
        np.subtract(self.right[:n_internal], inner, out=inner)
        node = np.broadcast_to(self.roots, (n_rows, len(self.roots)))
        if n_rows > 1:
            offsets = (np.arange(n_rows, dtype=np.intp) * n_nodes)[:, None]
            following += offsets
            node = node + offsets
        flat = following.ravel()
        for _ in range(self.depth):
            node = flat[node]
        return node - offsets if n_rows > 1 else node

    def _leaves_level_by_level(self, X: np.ndarray) -> np.ndarray:
        """Move every (row, tree) pointer one level per step: work grows with depth, not with nodes.

        Pointers that reached a leaf are set aside, so the deep levels of a few long branches
        (leaf-wise growth makes depth 20+ with 31 leaves) move only the pointers still inside.
        """
        n_rows, n_features = X.shape
        node = np.tile(self.roots, n_rows)
        row_start = np.repeat(np.arange(n_rows, dtype=np.intp) * n_features, len(self.roots))
        leaves = np.empty_like(node)
        active = np.arange(len(node))
        flat = X.ravel()
        check_missing = bool(np.isnan(X).any())
        for _ in range(self.depth):
            values = flat[row_start + self.feature[node]]
            go_left = values <= self.threshold[node]
            if check_missing:
                go_left |= np.isnan(values) & self.missing_left[node]
            node = self.right[node] - go_left * self.step_left[node]
            inside = node < self.n_internal
            if not inside.all():
                done = ~inside
                leaves[active[done]] = node[done]
                active, node, row_start = active[inside], node[inside], row_start[inside]
                if not len(node):
                    break
        leaves[active] = node
        return leaves.reshape(n_rows, len(self.roots))

    @classmethod
    def from_boosters(cls, boosters: Sequence[Any]) -> PackedTrees:
        """Pack fitted `HistGradientBoostingRegressor`s; NotCompilable for what is not supported."""
        if not boosters:
            raise NotCompilable("no boosters to pack")
        trees_per_booster = [_hgb_trees(booster) for booster in boosters]
        n_features = {int(b.n_features_in_) for b in boosters}
        if len(n_features) != 1:
            raise NotCompilable(f"boosters read different numbers of features: {sorted(n_features)}")
        n_trees = max(1, max(len(trees) for trees in trees_per_booster))
        # Each tree as (nodes, is_leaf); padded trees are a single leaf of value 0.
        layout: list[tuple[np.ndarray | None, np.ndarray]] = []
        for trees in trees_per_booster:
            for tree_nodes in trees:
                layout.append((tree_nodes, tree_nodes["is_leaf"].astype(bool)))
            layout.extend((None, np.ones(1, dtype=bool)) for _ in range(n_trees - len(trees)))
        n_internal = sum(int((~is_leaf).sum()) for _, is_leaf in layout)
        n_nodes = sum(len(is_leaf) for _, is_leaf in layout)
        feature = np.zeros(n_nodes, dtype=np.intp)
        threshold = np.full(n_nodes, np.inf)
        missing_left = np.ones(n_nodes, dtype=bool)
        left = np.arange(n_nodes, dtype=np.intp)
        right = np.arange(n_nodes, dtype=np.intp)
        value = np.zeros(n_nodes)
        roots = np.empty(len(layout), dtype=np.intp)
        next_internal, next_leaf, depth = 0, n_internal, 0
        for index, (nodes, is_leaf) in enumerate(layout):
            packed = np.empty(len(is_leaf), dtype=np.intp)
            n_in = int((~is_leaf).sum())
            packed[~is_leaf] = np.arange(next_internal, next_internal + n_in)
            packed[is_leaf] = np.arange(next_leaf, next_leaf + len(is_leaf) - n_in)
            next_internal += n_in
            next_leaf += len(is_leaf) - n_in
            roots[index] = packed[0]
            if nodes is None:
                continue
            inner = ~is_leaf
            where = packed[inner]
            feature[where] = nodes["feature_idx"][inner]
            threshold[where] = nodes["num_threshold"][inner]
            missing_left[where] = nodes["missing_go_to_left"][inner].astype(bool)
            left[where] = packed[nodes["left"][inner].astype(np.intp)]
            right[where] = packed[nodes["right"][inner].astype(np.intp)]
            value[packed[is_leaf]] = nodes["value"][is_leaf]
            depth = max(depth, int(nodes["depth"].max()))
        if feature.size and feature.max(initial=0) >= next(iter(n_features)):
            raise NotCompilable("a split reads a feature index beyond the booster's inputs")
        baseline = np.array([float(np.asarray(b._baseline_prediction).reshape(-1)[0]) for b in boosters])
        exp_link = np.array([_link_is_exp(b) for b in boosters], dtype=bool)
        return cls(
            feature=feature,
            threshold=threshold,
            missing_left=missing_left,
            left=left,
            right=right,
            step_left=right - left,
            value=value,
            roots=roots,
            baseline=baseline,
            exp_link=exp_link,
            n_internal=n_internal,
            n_trees=n_trees,
            depth=depth,
            n_features=next(iter(n_features)),
        )


def _hgb_trees(booster: Any) -> list[np.ndarray]:
    """The node arrays of a fitted single-output, numeric-only `HistGradientBoostingRegressor`."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    if type(booster) is not HistGradientBoostingRegressor:
        raise NotCompilable(f"{type(booster).__name__} is not a HistGradientBoostingRegressor")
    if not hasattr(booster, "_predictors"):
        raise NotCompilable("the booster is not fitted")
    if getattr(booster, "_preprocessor", None) is not None:
        raise NotCompilable("the booster has categorical features (an internal ordinal encoder)")
    if int(getattr(booster, "n_trees_per_iteration_", 1)) != 1:
        raise NotCompilable("more than one tree per iteration")
    trees = []
    for iteration in booster._predictors:
        if len(iteration) != 1:
            raise NotCompilable("more than one tree per iteration")
        nodes = iteration[0].nodes
        if np.any(nodes["is_categorical"][nodes["is_leaf"] == 0]):
            raise NotCompilable("categorical splits are not supported")
        trees.append(nodes)
    return trees


def _link_is_exp(booster: Any) -> bool:
    from sklearn._loss.link import IdentityLink, LogLink

    link = booster._loss.link
    if type(link) is IdentityLink:
        return False
    if type(link) is LogLink:
        return True
    raise NotCompilable(f"link {type(link).__name__} is not supported")


def as_rows(X: Any, n_features: int | None = None) -> np.ndarray:
    """`X` as a 2-D float64 array (of `n_features` columns if given); ValueError otherwise."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array of rows, got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the model expects {n_features}")
    return X


# --- Composite estimators --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CompiledModel:
    """`predict` of a fitted estimator as NumPy steps; call it like `estimator.predict`."""

    predict: Transform
    #: What was compiled, e.g. "ResidualBoost(Pipeline(StandardScaler, Ridge), 6x50 trees)".
    description: str
    n_trees: int

    def __call__(self, X: Any) -> np.ndarray:
        return self.predict(X)


#: Turns packed boosters into a function rows -> (n_rows, n_boosters), like `PackedTrees.predict`.
TreeBackend = Callable[[PackedTrees], Callable[[np.ndarray], np.ndarray]]


@dataclass
class Compiler:
    """What one compilation carries down the estimator tree (the tree evaluator, a tree count), and
    what an estimator's own `compile_predict` / `compile_transform` uses to compile its parts."""

    backend: TreeBackend | None
    n_trees: int = 0

    def predictor(self, estimator: Any) -> tuple[Transform, str]:
        """A function computing `estimator.predict` and a short description."""
        return _compile_predictor(estimator, self)

    def transformer(self, step: Any) -> tuple[Transform, str]:
        """A function computing `step.transform` and its name."""
        return _compile_transformer(step, self)

    def pack(self, boosters: Sequence[Any]) -> tuple[Callable[[np.ndarray], np.ndarray], PackedTrees]:
        """Fitted `HistGradientBoostingRegressor`s as one evaluator: rows -> (n_rows, n_boosters)."""
        packed = PackedTrees.from_boosters(boosters)
        self.n_trees += sum(len(b._predictors) for b in boosters)
        return (packed.predict if self.backend is None else self.backend(packed)), packed


def compile_model(estimator: Any) -> CompiledModel | None:
    """The packed equivalent of `estimator.predict`, or None when any part is not supported."""
    try:
        return compile_or_raise(estimator)
    except NotCompilable:
        return None


def compile_or_raise(estimator: Any, trees: TreeBackend | None = None) -> CompiledModel:
    """Like `compile_model`, but raises `NotCompilable` saying which part is not supported (for logs).

    `trees` replaces `PackedTrees.predict` as the evaluator of each group of boosters (e.g. an
    ONNX Runtime session built from the packed arrays, see bench/serving/predict_cost.py); it gets
    the `PackedTrees` and returns a function with the same contract.
    """
    compiler = Compiler(trees)
    predict, description = compiler.predictor(estimator)
    return CompiledModel(predict=predict, description=description, n_trees=compiler.n_trees)


def parity_report(model: Any, compiled: Callable[[Any], np.ndarray], X: Any) -> dict[str, Any]:
    """How far `compiled(X)` is from `model.predict(X)`: the numbers to log at registration.

    Returns `max_abs_diff` (0.0 when bit for bit; inf when shapes or missing values disagree),
    `rows`, `outputs` (values per row) and `bit_exact`.
    """
    expected = np.asarray(model.predict(X), dtype=np.float64)
    got = np.asarray(compiled(X), dtype=np.float64)
    rows = int(expected.shape[0]) if expected.ndim else 1
    if expected.shape != got.shape:
        return {"max_abs_diff": float("inf"), "rows": rows, "outputs": -1, "bit_exact": False}
    same_nan = np.array_equal(np.isnan(expected), np.isnan(got))
    finite = ~np.isnan(expected)
    diff = np.abs(expected[finite] - got[finite])
    max_diff = float(diff.max()) if diff.size else 0.0
    if not same_nan or np.isnan(max_diff):
        max_diff = float("inf")
    outputs = int(np.prod(expected.shape[1:])) if expected.ndim > 1 else 1
    return {
        "max_abs_diff": max_diff,
        "rows": rows,
        "outputs": outputs,
        "bit_exact": bool(same_nan and np.array_equal(expected[finite], got[finite])),
    }


def _compile_predictor(estimator: Any, compiler: Compiler) -> tuple[Transform, str]:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline

    kind = type(estimator)
    if kind is HistGradientBoostingRegressor:
        evaluate, packed = compiler.pack([estimator])

        def booster(X: Any) -> np.ndarray:
            return evaluate(as_rows(X, packed.n_features))[:, 0]

        return booster, f"HGB({packed.n_trees} trees, depth {packed.depth})"
    if kind is MultiOutputRegressor:
        return _compile_multi_output(estimator, compiler)
    if kind is Pipeline:
        return _compile_pipeline(estimator, compiler)
    own = getattr(estimator, "compile_predict", None)
    if callable(own):
        return own(compiler)  # a pipeline's own estimator (see the module docstring)
    linear = _linear(estimator)
    if linear is not None:
        return linear, kind.__name__
    raise NotCompilable(f"{kind.__module__}.{kind.__name__} is not supported")


def _compile_multi_output(estimator: Any, compiler: Compiler) -> tuple[Transform, str]:
    from sklearn.ensemble import HistGradientBoostingRegressor

    members = list(estimator.estimators_)
    if members and all(type(m) is HistGradientBoostingRegressor for m in members):
        evaluate, packed = compiler.pack(members)

        def multi_output_trees(X: Any) -> np.ndarray:
            return evaluate(as_rows(X, packed.n_features))

        return multi_output_trees, f"MultiOutput({len(members)}x{packed.n_trees} trees, depth {packed.depth})"
    parts = [compiler.predictor(m) for m in members]
    functions = [f for f, _ in parts]

    def multi_output(X: Any) -> np.ndarray:
        return np.asarray([f(X) for f in functions]).T

    return multi_output, f"MultiOutput({', '.join(sorted({t for _, t in parts}))})"


def pca_inverse(pca: Any) -> Transform:
    """`pca.inverse_transform` as the same NumPy arithmetic, for a fitted `PCA`."""
    from sklearn.decomposition import PCA

    if type(pca) is not PCA or not hasattr(pca, "components_"):
        raise NotCompilable(f"{type(pca).__name__} is not a fitted PCA")
    if pca.whiten:
        components = np.sqrt(pca.explained_variance_[:, np.newaxis]) * pca.components_
    else:
        components = pca.components_
    mean = pca.mean_

    def inverse(Z: np.ndarray) -> np.ndarray:
        return Z @ components + mean

    return inverse


def _compile_pipeline(pipeline: Any, compiler: Compiler) -> tuple[Transform, str]:
    steps = [(name, step) for name, step in pipeline.steps if step is not None and step != "passthrough"]
    if not steps:
        raise NotCompilable("the pipeline has no final estimator")
    transforms = [compiler.transformer(step) for _, step in steps[:-1]]
    final, final_text = compiler.predictor(steps[-1][1])
    functions = [f for f, _ in transforms]

    def pipeline_predict(X: Any) -> np.ndarray:
        for function in functions:
            X = function(X)
        return final(X)

    return pipeline_predict, f"Pipeline({', '.join([t for _, t in transforms] + [final_text])})"


def _linear(estimator: Any) -> Transform | None:
    """`X @ coef_.T + intercept_` for estimators whose `predict` is exactly `LinearModel`'s."""
    from sklearn.linear_model import LinearRegression, Ridge, RidgeCV
    from sklearn.linear_model._base import LinearModel

    kind = type(estimator)
    plain_predict = kind.predict is LinearModel.predict or kind in (LinearRegression, Ridge, RidgeCV)
    if not (
        isinstance(estimator, LinearModel)
        and plain_predict
        and kind._decision_function is LinearModel._decision_function
    ):
        return None
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if not isinstance(coef, np.ndarray) or coef.dtype != np.float64 or intercept is None:
        raise NotCompilable(f"{kind.__name__} has sparse or non-float64 coefficients")
    coef_t = coef if coef.ndim == 1 else coef.T  # a view, as scikit-learn multiplies by it
    n_features = int(coef.shape[-1])

    def linear(X: Any) -> np.ndarray:
        return as_rows(X, n_features) @ coef_t + intercept

    return linear


def _compile_transformer(step: Any, compiler: Compiler) -> tuple[Transform, str]:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    kind = type(step)
    if kind is StandardScaler:
        return _standard_scaler(step), "StandardScaler"
    own = getattr(step, "compile_transform", None)
    if callable(own):
        return own(compiler)  # a pipeline's own transformer (see the module docstring)
    if kind is PolynomialFeatures:
        return _polynomial(step), "PolynomialFeatures"
    if kind is ColumnTransformer:
        return _column_transformer(step), "ColumnTransformer"
    raise NotCompilable(f"transformer {kind.__module__}.{kind.__name__} is not supported")


def _standard_scaler(scaler: Any) -> Transform:
    if not hasattr(scaler, "n_features_in_"):
        raise NotCompilable("StandardScaler is not fitted")
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None
    n_features = int(scaler.n_features_in_)

    def standard_scaler(X: Any) -> np.ndarray:
        X = np.array(X, dtype=np.float64)  # a copy: scikit-learn scales a copy in place
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"X has shape {X.shape}, but StandardScaler expects {n_features} features")
        if mean is not None:
            X -= mean
        if scale is not None:
            X /= scale
        return X

    return standard_scaler


def _polynomial(poly: Any) -> Transform:
    """Degree <= 2 products, factors in ascending column order with 1.0 as padding (exact)."""
    powers = getattr(poly, "powers_", None)
    if powers is None:
        raise NotCompilable("PolynomialFeatures is not fitted")
    if int(powers.sum(axis=1).max(initial=0)) > 2:
        raise NotCompilable("PolynomialFeatures above degree 2 is not supported")
    n_features = powers.shape[1]
    pad = n_features  # index of a column of ones
    first = np.full(len(powers), pad, dtype=np.intp)
    second = np.full(len(powers), pad, dtype=np.intp)
    for out, row in enumerate(powers):
        factors = [j for j in range(n_features) for _ in range(int(row[j]))]
        if factors:
            first[out] = factors[0]
        if len(factors) > 1:
            second[out] = factors[1]

    def polynomial(X: Any) -> np.ndarray:
        X = as_rows(X, n_features)
        padded = np.hstack([X, np.ones((len(X), 1))])
        # C order, as scikit-learn's output: a matrix product's rounding depends on the layout.
        return np.ascontiguousarray(padded[:, first] * padded[:, second])

    return polynomial


def _column_transformer(transformer: Any) -> Transform:
    """Dense ColumnTransformer of StandardScaler / OneHotEncoder / passthrough on selected columns."""
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if not hasattr(transformer, "transformers_"):
        raise NotCompilable("ColumnTransformer is not fitted")
    if getattr(transformer, "sparse_output_", False):
        raise NotCompilable("sparse ColumnTransformer output is not supported")
    names = getattr(transformer, "feature_names_in_", None)
    indices = transformer._transformer_to_input_indices
    parts: list[tuple[Transform, np.ndarray]] = []
    for name, step, _ in transformer.transformers_:
        if step == "drop":
            continue
        columns = np.asarray(indices[name], dtype=np.intp)
        if len(columns) == 0:
            continue
        if step == "passthrough":
            parts.append((lambda block: np.asarray(block, dtype=np.float64), columns))
        elif type(step) is StandardScaler:
            parts.append((_standard_scaler(step), columns))
        elif type(step) is OneHotEncoder:
            parts.append((_one_hot(step), columns))
        else:
            raise NotCompilable(f"ColumnTransformer step {type(step).__name__} is not supported")
    n_features = int(transformer.n_features_in_)

    def column_transformer(X: Any) -> np.ndarray:
        if hasattr(X, "iloc"):
            if names is not None:
                missing = [c for c in names if c not in X.columns]
                if missing:
                    raise ValueError(f"columns are missing: {missing}")
                X = X[list(names)]
            data = X.to_numpy(dtype=object)
        else:
            data = np.asarray(X)
        if data.ndim != 2 or data.shape[1] != n_features:
            raise ValueError(f"X has shape {data.shape}, but the ColumnTransformer expects {n_features} columns")
        return np.hstack([function(data[:, columns]) for function, columns in parts])

    return column_transformer


def _one_hot(encoder: Any) -> Transform:
    if getattr(encoder, "_infrequent_enabled", False):
        raise NotCompilable("OneHotEncoder with infrequent categories is not supported")
    if encoder.handle_unknown not in ("error", "ignore"):
        raise NotCompilable(f"OneHotEncoder handle_unknown={encoder.handle_unknown!r} is not supported")
    if np.dtype(encoder.dtype) != np.float64:
        raise NotCompilable("OneHotEncoder with a non-float64 dtype is not supported")
    categories = [np.asarray(c, dtype=object) for c in encoder.categories_]
    for values in categories:
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
            raise NotCompilable("OneHotEncoder with missing-value categories is not supported")
    drop = encoder.drop_idx_ if encoder.drop_idx_ is not None else [None] * len(categories)
    kept = [
        np.array([k for k in range(len(c)) if dropped is None or k != dropped], dtype=np.intp)
        for c, dropped in zip(categories, drop, strict=True)
    ]
    strict = encoder.handle_unknown == "error"

    def one_hot(block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=object)
        outputs = []
        for j, (values, keep) in enumerate(zip(categories, kept, strict=True)):
            matches = block[:, j][:, None] == values[None, :]
            if strict and not matches.any(axis=1).all():
                unknown = sorted({str(v) for v, ok in zip(block[:, j], matches.any(axis=1), strict=True) if not ok})
                raise ValueError(f"Found unknown categories {unknown} in column {j} during transform")
            outputs.append(matches[:, keep].astype(np.float64))
        return np.hstack(outputs)

    return one_hot
