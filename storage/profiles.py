"""Named trust profiles: the dotted names a library's objects need, to pass as
``trusted=`` (or ``TrainingTask.trusted_types``) instead of finding them one
refusal at a time.

:func:`sklearn` covers fitted scikit-learn estimators of its common families,
curated as skops does: every public estimator class that
``sklearn.utils.all_estimators()`` lists in ``sklearn.linear_model``,
``sklearn.tree``, ``sklearn.ensemble``, ``sklearn.preprocessing``,
``sklearn.pipeline`` and ``sklearn.compose``, plus the private classes their
fitted state holds: the tree structure (``sklearn.tree._tree.Tree``), the loss
and link objects of SGD, GLMs and gradient boosting (every class defined in
``sklearn.linear_model._sgd_fast``, ``sklearn._loss._loss``, ``.loss`` and
``.link``, and Cython's ``__pyx_unpickle_<class>`` helpers of those classes), gradient boosting's initial ``Dummy*`` estimators, histogram
boosting's bin mapper and tree predictor, and ``sklearn.utils.Bunch`` (voting
and stacking). Their arrays (coefficients, tree nodes) are NPY members like any
array. Left out: ``SplineTransformer`` (it holds scipy objects), and every
other family; anything outside the profile is refused by name as usual, and
``FunctionTransformer``'s function is a global of its own, trusted only if
named.

The list is computed from the installed scikit-learn (its private module
paths change between releases), once per process.
"""

from __future__ import annotations

import functools
import importlib

__all__ = ["sklearn"]

_FAMILIES = ("linear_model", "tree", "ensemble", "preprocessing", "pipeline", "compose")
_LEFT_OUT = frozenset({"sklearn.preprocessing._polynomial.SplineTransformer"})
_HELPER_MODULES = (
    "sklearn.linear_model._sgd_fast", "sklearn._loss._loss", "sklearn._loss.loss", "sklearn._loss.link",
)
_HELPERS = (
    "sklearn.tree._tree.Tree",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils._bunch.Bunch",
)


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def sklearn() -> tuple[str, ...]:
    """Dotted names that fitted scikit-learn estimators of the common families
    need (see the module docstring), sorted. Raises ImportError without
    scikit-learn."""
    from sklearn.utils import all_estimators

    prefixes = tuple(f"sklearn.{family}." for family in _FAMILIES)
    names = {_dotted(cls) for _, cls in all_estimators() if _dotted(cls).startswith(prefixes)}
    for module_name in _HELPER_MODULES:
        module = importlib.import_module(module_name)
        classes = [name for name, obj in vars(module).items()
                   if isinstance(obj, type) and obj.__module__ == module_name]
        names.update(f"{module_name}.{name}" for name in classes)
        names.update(  # Cython's pickling helpers of those classes
            f"{module_name}.__pyx_unpickle_{name}" for name in classes
            if hasattr(module, f"__pyx_unpickle_{name}")
        )
    return tuple(sorted((names | set(_HELPERS)) - _LEFT_OUT))
