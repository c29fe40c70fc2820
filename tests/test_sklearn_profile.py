"""The scikit-learn trust profile: fitted estimators of the common families
round-trip and predict identically, their arrays are members, and anything
outside the profile is refused by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    VotingClassifier,
)
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, PolynomialFeatures, SplineTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from luigi_checkpoint.storage import profiles
from luigi_checkpoint.storage.archive import dump, load
from luigi_checkpoint.storage.errors import UntrustedTypeError

from .test_readme import examples, run_example

X, Y_CLASS = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
_, Y_REG = make_regression(n_samples=120, n_features=6, random_state=0)
Y_COUNT = np.abs(Y_REG) // 10  # counts, for the Poisson GLM
CATEGORIES = np.random.default_rng(0).integers(0, 4, size=(120, 2))


def column_transformer() -> ColumnTransformer:
    return ColumnTransformer([("scale", StandardScaler(), [0, 1]), ("poly", PolynomialFeatures(2), [2])],
                             remainder="passthrough")


# family -> (estimator, targets, what to compare): predict for models, transform for preprocessing
FITTED: dict[str, tuple[Callable[[], Any], Any, str]] = {
    "linear/logistic": (lambda: LogisticRegression(max_iter=500), Y_CLASS, "predict_proba"),
    "linear/sgd": (lambda: SGDClassifier(random_state=0), Y_CLASS, "decision_function"),
    "linear/ridge": (Ridge, Y_REG, "predict"),
    "linear/poisson": (PoissonRegressor, Y_COUNT, "predict"),
    "tree/decision classifier": (lambda: DecisionTreeClassifier(random_state=0), Y_CLASS, "predict_proba"),
    "tree/decision regressor": (lambda: DecisionTreeRegressor(max_depth=5, random_state=0), Y_REG, "predict"),
    "forest/random": (lambda: RandomForestClassifier(n_estimators=8, random_state=0), Y_CLASS, "predict_proba"),
    "forest/extra trees": (lambda: ExtraTreesRegressor(n_estimators=8, random_state=0), Y_REG, "predict"),
    "boosting/gradient": (lambda: GradientBoostingClassifier(n_estimators=10, random_state=0), Y_CLASS,
                          "predict_proba"),
    "boosting/histogram": (lambda: HistGradientBoostingRegressor(max_iter=10), Y_REG, "predict"),
    "ensemble/voting": (lambda: VotingClassifier([("tree", DecisionTreeClassifier(random_state=0)),
                                                  ("linear", LogisticRegression(max_iter=500))], voting="soft"),
                        Y_CLASS, "predict_proba"),
    "preprocessing/standard": (StandardScaler, None, "transform"),
    "preprocessing/minmax": (MinMaxScaler, None, "transform"),
    "preprocessing/polynomial": (PolynomialFeatures, None, "transform"),
    "pipeline/scale+logistic": (lambda: Pipeline([("scale", StandardScaler()),
                                                  ("model", LogisticRegression(max_iter=500))]),
                                Y_CLASS, "predict_proba"),
    "pipeline/column transformer": (column_transformer, None, "transform"),
}


@pytest.mark.parametrize("family", list(FITTED))
def test_fitted_estimators_round_trip_with_the_profile_and_predict_identically(tmp_path: Path, family: str) -> None:
    make, targets, method = FITTED[family]
    estimator = make().fit(X, targets)
    dump({"model": estimator}, tmp_path / "a.zip")
    with pytest.raises(UntrustedTypeError, match=type(estimator).__name__):
        load(tmp_path / "a.zip")
    back = load(tmp_path / "a.zip", trusted=profiles.sklearn())["model"]
    assert type(back) is type(estimator)
    assert np.array_equal(getattr(back, method)(X), getattr(estimator, method)(X))


def test_encoders_round_trip(tmp_path: Path) -> None:
    encoder = OneHotEncoder(handle_unknown="ignore").fit(CATEGORIES)
    dump(encoder, tmp_path / "a.zip")
    back = load(tmp_path / "a.zip", trusted=profiles.sklearn())
    assert np.array_equal(back.transform(CATEGORIES).toarray(), encoder.transform(CATEGORIES).toarray())


def test_estimator_arrays_are_members(tmp_path: Path) -> None:
    linear = LogisticRegression(max_iter=500).fit(X, Y_CLASS)
    tree = DecisionTreeClassifier(random_state=0).fit(X, Y_CLASS)
    dump({"linear": linear, "tree": tree}, tmp_path / "a.zip")
    with np.load(tmp_path / "a.zip") as members:
        assert np.array_equal(members["linear/coef_"], linear.coef_)
        assert np.array_equal(members["linear/intercept_"], linear.intercept_)
        assert np.array_equal(members["tree/tree_/nodes"], tree.tree_.__getstate__()["nodes"])
        assert np.array_equal(members["tree/tree_/values"], tree.tree_.value)


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda: KMeans(n_clusters=2, n_init=1, random_state=0).fit(X), "sklearn.cluster._kmeans.KMeans"),
        (lambda: SplineTransformer().fit(X), "scipy.interpolate._bsplines.BSpline"),
    ],
    ids=["other family", "scipy objects"],
)
def test_what_the_profile_leaves_out_is_refused_by_name(tmp_path: Path, make: Any, refused: str) -> None:
    dump(make(), tmp_path / "a.zip")
    with pytest.raises(UntrustedTypeError) as caught:
        load(tmp_path / "a.zip", trusted=profiles.sklearn())
    assert refused in caught.value.names


def test_every_name_in_the_profile_names_a_class_or_its_cython_unpickler() -> None:
    for dotted in profiles.sklearn():
        module, _, name = dotted.rpartition(".")
        found = getattr(importlib.import_module(module), name)
        assert isinstance(found, type) or name.startswith("__pyx_unpickle_"), dotted


def test_readme_sklearn_examples_run(tmp_path: Path) -> None:
    assert examples("sklearn")
    for code in examples("sklearn"):
        run_example(code, tmp_path)
