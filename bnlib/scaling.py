"""Feature scaling and gradient descent on least squares (the feature-scaling chapter).

:func:`min_max_scale` and :func:`standardize` scale each feature (column) of an ``(N, D)``
table with statistics of the training set only and apply the same statistics to later data.
:func:`least_squares_gd` runs gradient descent on a least-squares problem, and
:func:`gd_steps_to_converge` counts the steps it needs, to show how the condition number of
the Hessian sets the speed.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- feature scaling
# The feature-scaling chapter's helpers: scale each feature (column) of an (N, D) table with
# statistics of the training set only, and apply the same statistics to any later data.


def _as_table(x: np.ndarray, name: str, num_features: int | None = None) -> np.ndarray:
    """``x`` as a floating ``(N, D)`` array (integers become float64), or a clear error."""
    x = np.asarray(x)
    if x.dtype.kind in "iu":
        x = x.astype(np.float64)
    elif x.dtype.kind != "f":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        hint = (
            "; for a single feature use x.reshape(-1, 1), for a single example x.reshape(1, -1)"
            if x.ndim == 1 else ""
        )
        raise ValueError(f"{name} must have shape (N, D), got {x.ndim}-D input of shape "
                         f"{x.shape}{hint}")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"{name} has {x.shape[1]} features (columns) but x_train has {num_features}: "
            "both must describe the same features in the same order"
        )
    if num_features is None and x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): statistics need at least one row")
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} contains {x[row, col]} at [{row}, {col}]; scaling needs "
                         "finite values (impute or drop missing ones first)")
    return x


def _constant_features(x_train: np.ndarray) -> np.ndarray:
    """Indices of the features that take a single value in ``x_train`` (exactly)."""
    return np.flatnonzero(x_train.max(axis=0) == x_train.min(axis=0))


def _constant_error(x_train: np.ndarray, constant: np.ndarray, problem: str, fix: str) -> str:
    """The message for constant features; a single row gets its own explanation."""
    if x_train.shape[0] == 1:
        return (
            "x_train has a single row, so every feature is constant and " + problem + ": "
            "statistics need many examples. To scale one new example, pass the training set "
            "as x_train and the example as x_test, of shape (1, D)"
        )
    return f"feature(s) {constant.tolist()} are constant in x_train, so {problem}; {fix}"


def _scaled(
    x_train: np.ndarray, x_test: np.ndarray | None, shift: np.ndarray, scale: np.ndarray
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(x - shift) / scale`` for ``x_train`` (and ``x_test``), each in its own dtype."""
    def apply(x: np.ndarray) -> np.ndarray:
        return ((x - shift) / scale).astype(x.dtype, copy=False)

    if x_test is None:
        return apply(x_train)
    return apply(x_train), apply(_as_table(x_test, "x_test", x_train.shape[1]))


def min_max_scale(
    x_train: np.ndarray, x_test: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Min-max scaling: map each feature's training range onto [0, 1].

        x' = (x - min_train) / (max_train - min_train)    (per feature, i.e. per column)

    Inputs:
        x_train: ``(N, D)``; the minimum and maximum of each feature come from here only.
        x_test: optional ``(M, D)``, scaled with the *training* minimum and maximum, so its
            values can fall outside [0, 1].
    Returns:
        ``x_train`` scaled, ``(N, D)``; or the pair ``(x_train scaled, x_test scaled)`` when
        ``x_test`` is given. Floating inputs keep their dtype, integers become float64.
    Raises:
        ValueError: for input that is not 2-D, a feature-count mismatch, NaN or inf, an empty
            ``x_train``, or a feature that is constant in ``x_train``: its range is 0, so the
            formula divides by zero; drop such features (they carry no information).
        TypeError: for non-numeric input.
    """
    x_train = _as_table(x_train, "x_train")
    constant = _constant_features(x_train)
    if constant.size:
        raise ValueError(_constant_error(
            x_train, constant, "min-max scaling would divide by max - min = 0",
            "drop them, e.g. x[:, x_train.max(0) > x_train.min(0)]",
        ))
    low = x_train.min(axis=0).astype(np.float64)
    high = x_train.max(axis=0).astype(np.float64)
    return _scaled(x_train, x_test, low, high - low)


def standardize(
    x_train: np.ndarray, x_test: np.ndarray | None = None, eps: float = 0.0
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Z-score standardization with the training set's per-feature statistics.

        z = (x - mean_train) / sqrt(var_train + eps)    (per feature, i.e. per column)

    ``var_train`` is the biased variance (divide by N), as batch normalization uses; the
    statistics are computed in float64 and in two passes (no ``E[x^2] - E[x]^2``).

    Inputs:
        x_train: ``(N, D)``; the statistics come from here only.
        x_test: optional ``(M, D)``, standardized with the *training* statistics.
        eps: added to the variance inside the square root (batch normalization's guard).
    Returns:
        ``x_train`` standardized, ``(N, D)``; or the pair ``(x_train standardized, x_test
        standardized)`` when ``x_test`` is given. Floating inputs keep their dtype, integers
        become float64.
    Raises:
        ValueError: for input that is not 2-D, a feature-count mismatch, NaN or inf, an empty
            ``x_train``, ``eps < 0``, or, with ``eps=0``, a feature that is constant in
            ``x_train`` (its standard deviation is 0). With ``eps > 0`` a constant feature is
            allowed: it becomes exactly 0 in ``x_train``, and a test value ``v`` becomes
            ``(v - constant) / sqrt(eps)``, which is huge for a small ``eps``.
        TypeError: for non-numeric input.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x_train = _as_table(x_train, "x_train")
    constant = _constant_features(x_train)
    if constant.size and eps == 0:
        raise ValueError(_constant_error(
            x_train, constant, "standardizing would divide by a standard deviation of 0",
            "drop them, or pass eps > 0 to map them to 0",
        ))
    mean = x_train.mean(axis=0, dtype=np.float64)
    mean[constant] = x_train[0, constant]  # exact, so a constant feature becomes exactly 0
    var = np.square(x_train - mean).mean(axis=0)
    return _scaled(x_train, x_test, mean, np.sqrt(var + eps))


# --------------------------------------------------------------------------- gradient descent
# Full-batch gradient descent on least squares, the quadratic where the feature-scaling
# chapter explains, through the Hessian, why scaling speeds training up.


def least_squares_gd(
    x: np.ndarray, y: np.ndarray, lr: float, steps: int, w0: np.ndarray | None = None
) -> np.ndarray:
    """The path of gradient descent on ``L(w) = ||x w - y||^2 / (2N)``.

    The gradient is ``H w - g`` with the Hessian ``H = x^T x / N`` and ``g = x^T y / N``,
    so each step is ``w <- w - lr * (H w - g)``.

    Inputs:
        x: ``(N, D)`` features; y: ``(N,)`` targets; lr: the learning rate;
        steps: how many updates; w0: ``(D,)`` start (zeros by default).
    Returns:
        ``(steps + 1, D)``: ``w_0, w_1, ..., w_steps`` (float64). A run that diverges
        overflows to inf or NaN without a warning.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x of shape (N, D) and y of shape (N,), got {x.shape} "
                         f"and {y.shape}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n, d = x.shape
    hessian, g = x.T @ x / n, x.T @ y / n
    path = np.empty((steps + 1, d))
    path[0] = np.zeros(d) if w0 is None else w0
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps):
            path[k + 1] = path[k] - lr * (hessian @ path[k] - g)
    return path


def gd_steps_to_converge(
    hessian: np.ndarray, w0: np.ndarray, w_star: np.ndarray, lr: float, tol: float = 1e-6
) -> float:
    """How many gradient-descent steps a quadratic needs, in closed form (no iterating).

    For ``L(w) = L(w*) + (w - w*)^T H (w - w*) / 2``, gradient descent with learning rate
    ``lr`` moves each eigen-coordinate ``e_i`` of ``w - w*`` (eigenvalue ``lam_i`` of ``H``)
    as ``e_i <- (1 - lr * lam_i) e_i``, so after ``k`` steps the loss gap is

        L(w_k) - L(w*) = sum_i lam_i e_i(0)^2 (1 - lr lam_i)^(2k) / 2.

    Inputs:
        hessian: ``(D, D)`` symmetric positive semi-definite; w0, w_star: ``(D,)``;
        lr: the learning rate; tol: the target fraction of the starting gap.
    Returns:
        The smallest ``k`` with ``L(w_k) - L(w*) <= tol * (L(w_0) - L(w*))`` (0 when the gap
        is already 0), or ``inf`` when some mode that contributes to the gap does not shrink
        (``|1 - lr lam_i| >= 1``, i.e. ``lr >= 2 / lam_i``): the run never gets there.
    """
    lam, q = np.linalg.eigh(np.asarray(hessian, dtype=np.float64))
    e = q.T @ (np.asarray(w0, dtype=np.float64) - np.asarray(w_star, dtype=np.float64))
    weight = 0.5 * np.clip(lam, 0.0, None) * e**2  # each mode's share of the starting gap
    live = weight > 0
    lam, weight = lam[live], weight[live]
    if weight.sum() == 0:
        return 0
    factor = np.abs(1.0 - lr * lam)  # how much one step shrinks each mode
    if np.any(factor >= 1.0):
        return float("inf")

    def gap_fraction(k: int) -> float:  # (L(w_k) - L(w*)) / (L(w_0) - L(w*)), non-increasing
        return float(np.sum(weight * factor ** (2 * k)) / weight.sum())

    if tol >= 1.0:
        return 0
    low, high = 0, 1  # invariant: gap_fraction(low) > tol
    while gap_fraction(high) > tol:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        if gap_fraction(mid) <= tol:
            high = mid
        else:
            low = mid
    return high
