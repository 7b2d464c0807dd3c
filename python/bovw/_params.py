"""scikit-learn's parameter validation, typed for bovw's estimators.

The estimators declare ``_parameter_constraints`` (a dict from parameter
name to a list of constraints, any one of which may hold) and validate them
in ``fit`` through :func:`fit_context`, as scikit-learn's own estimators do
(``sklearn/base.py``, ``_fit_context``; ``sklearn/utils/_param_validation.py``).
A parameter that satisfies none of its constraints raises
``sklearn.utils._param_validation.InvalidParameterError``, a subclass of both
``ValueError`` and ``TypeError`` whose message names the parameter, the
accepted values and the value given.

scikit-learn ships no type information, so the decorators here are wrapped
to keep the signatures of the functions they decorate visible to mypy.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils._param_validation import validate_params as _validate_params

__all__ = ["Constraints", "NonBoolInterval", "fit_context", "validate_params"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: ``_parameter_constraints``: parameter name -> accepted constraints.
Constraints = dict[str, list[Any]]


class NonBoolInterval(Interval):
    """``Interval`` that refuses booleans.

    scikit-learn's ``Interval(Integral, ...)`` accepts ``True`` and ``False``
    (``bool`` is an ``Integral``); bovw refuses them for counts and sizes,
    where ``n_clusters=True`` is a mistake rather than 1. The message is
    scikit-learn's (for example "an int in the range [1, inf)").
    """

    def is_satisfied_by(self, val: Any) -> bool:
        if isinstance(val, (bool, np.bool_)):
            return False
        return bool(super().is_satisfied_by(val))


def fit_context(fit_method: _F) -> _F:
    """Validate ``_parameter_constraints`` before ``fit_method`` runs.

    scikit-learn's ``_fit_context(prefer_skip_nested_validation=True)``: the
    parameters are checked once on entry (for ``partial_fit``, only until the
    estimator is fitted), and nested scikit-learn calls skip their own checks.

    Raises
    ------
    sklearn.utils._param_validation.InvalidParameterError
        A ``ValueError`` and ``TypeError``, naming the parameter.
    """
    wrapped: _F = _fit_context(prefer_skip_nested_validation=True)(fit_method)
    return wrapped


def validate_params(constraints: Constraints) -> Callable[[_F], _F]:
    """scikit-learn's ``validate_params`` decorator for public functions.

    Parameters
    ----------
    constraints : dict
        Parameter name -> list of constraints (see ``fit_context``).
    """
    decorator: Callable[[_F], _F] = _validate_params(constraints, prefer_skip_nested_validation=True)
    return decorator
