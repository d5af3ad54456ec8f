"""LogME (You et al., ICML 2021): how well frozen features suit a labelled task, with no training.

For each class c, a Bayesian linear model y_c = F w + noise, with prior w ~ N(0, 1/alpha I) and
noise ~ N(0, 1/beta I), y_c the one-hot indicator of c. Its evidence p(y_c | F, alpha, beta) is
maximised over alpha and beta by MacKay's fixed-point updates (Bishop, PRML 3.5.2), all in the
eigenbasis of F'F from one SVD of F; LogME is the maximised log evidence per item, averaged over
the classes. Higher is better; scores are comparable between feature sets of the same labels.

Features are centred and scaled to unit variance per dimension first, as the heads see them
(their StandardScaler), so a feature set's raw scale does not move its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

MAX_ITERATIONS = 1000  # each is O(rank); where alpha runs away (no signal) it stops here
TOLERANCE = 1e-6  # relative change of alpha and beta at convergence


@dataclass(frozen=True)
class Evidence:
    """One target's maximised evidence, with the alpha and beta that reach it."""

    log_evidence: float  # log p(y | F, alpha, beta), whole target
    alpha: float
    beta: float
    iterations: int


def standardized(F: np.ndarray) -> np.ndarray:
    F = np.asarray(F, np.float64)
    std = F.std(axis=0)
    return (F - F.mean(axis=0)) / np.where(std > 0, std, 1.0)


def log_evidence(
    s: np.ndarray, z: np.ndarray, y_norm2: float, n: int, d: int, alpha: float, beta: float
) -> float:
    """log p(y | alpha, beta) from the singular values `s` of F and `z` = U'y (Bishop 3.86)."""
    shrink = alpha + beta * s**2
    m_norm2 = float(np.sum((beta * s * z / shrink) ** 2))
    residual = y_norm2 - float(z @ z) + float(np.sum((alpha * z / shrink) ** 2))
    log_det_a = float(np.sum(np.log(shrink))) + (d - len(s)) * np.log(alpha)
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * m_norm2
        - log_det_a / 2
    )


def maximize_evidence(s: np.ndarray, z: np.ndarray, y_norm2: float, n: int, d: int) -> Evidence:
    """MacKay's updates: gamma = sum(beta s^2 / (alpha + beta s^2)), alpha = gamma / |m|^2,
    beta = (n - gamma) / |y - F m|^2, from alpha = beta = 1 until they settle."""
    alpha, beta, iterations = 1.0, 1.0, 0
    while iterations < MAX_ITERATIONS:
        iterations += 1
        shrink = alpha + beta * s**2
        gamma = float(np.sum(beta * s**2 / shrink))
        m_norm2 = float(np.sum((beta * s * z / shrink) ** 2))
        residual = y_norm2 - float(z @ z) + float(np.sum((alpha * z / shrink) ** 2))
        new_alpha = gamma / max(m_norm2, 1e-300)
        new_beta = (n - gamma) / max(residual, 1e-300)
        settled = (
            abs(new_alpha - alpha) <= TOLERANCE * alpha and abs(new_beta - beta) <= TOLERANCE * beta
        )
        alpha, beta = new_alpha, new_beta
        if settled:
            break
    return Evidence(log_evidence(s, z, y_norm2, n, d, alpha, beta), alpha, beta, iterations)


def left_singular(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F's left singular vectors and singular values, of the directions F spans, from the
    eigendecomposition of the smaller of FF' and F'F (4.6 s for a thin SVD of 1000 x 1664 on
    two cores, 0.3 s this way)."""
    n, d = F.shape
    if n <= d:
        eigenvalues, U = np.linalg.eigh(F @ F.T)
    else:
        eigenvalues, V = np.linalg.eigh(F.T @ F)
    keep = eigenvalues > eigenvalues.max() * 1e-10  # F spans nothing else: no evidence there
    s = np.sqrt(eigenvalues[keep])
    return (U[:, keep] if n <= d else (F @ V[:, keep]) / s), s


def logme(F: np.ndarray, y: np.ndarray) -> float:
    """LogME of features F (n, d) for class labels y (n,): mean over classes of the maximised
    log evidence per item."""
    F = standardized(F)
    n, d = F.shape
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"LogME needs at least two classes, got {classes.tolist()}")
    with threadpool_limits(limits=1):  # two BLAS threads fighting: 9 s instead of 0.2 s
        U, s = left_singular(F)
    scores = []
    for c in classes:
        target = (y == c).astype(np.float64)
        z = U.T @ target
        evidence = maximize_evidence(s, z, float(target @ target), n, d)
        scores.append(evidence.log_evidence / n)
    return float(np.mean(scores))
