"""LogME against a direct computation of the evidence it maximises."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from heads.logme import left_singular, log_evidence, logme, maximize_evidence, standardized


def synthetic(n=120, d=30, classes=3, signal=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    F = rng.normal(size=(n, d))
    F[:, :classes] += signal * np.eye(classes)[y]
    return F, y


@pytest.mark.parametrize(
    "n,d,signal", [(120, 30, 1.5), (60, 90, 3.0)], ids=["more items", "more dimensions"]
)
def test_evidence_equals_the_gaussian_marginal_likelihood(n, d, signal):
    """At the alpha, beta it finds, log p(y) equals log N(y; 0, I/beta + F F'/alpha), computed
    directly; and it is a maximum: moving either parameter lowers it."""
    F, y = synthetic(n, d, signal=signal)
    Fs = standardized(F)
    U, s = left_singular(Fs)
    target = (y == 1).astype(float)
    z = U.T @ target
    found = maximize_evidence(s, z, float(target @ target), n, d)
    cov = np.eye(n) / found.beta + Fs @ Fs.T / found.alpha
    direct = multivariate_normal(np.zeros(n), cov).logpdf(target)
    assert found.log_evidence == pytest.approx(direct, rel=1e-9)
    for alpha, beta in ((1.2, 1), (0.8, 1), (1, 1.2), (1, 0.8)):
        moved = log_evidence(s, z, float(target @ target), n, d, found.alpha * alpha,
                             found.beta * beta)  # fmt: skip
        assert moved < found.log_evidence


def test_logme_is_the_mean_per_item_evidence_over_the_classes():
    F, y = synthetic()
    Fs = standardized(F)
    U, s = left_singular(Fs)
    per_class = []
    for c in np.unique(y):
        target = (y == c).astype(float)
        evidence = maximize_evidence(s, U.T @ target, float(target @ target), *F.shape)
        per_class.append(evidence.log_evidence / len(y))
    assert logme(F, y) == pytest.approx(np.mean(per_class), rel=1e-12)


def test_features_that_carry_the_labels_score_higher_and_scale_does_not_matter():
    informative, y = synthetic(signal=2.0)
    noise = np.random.default_rng(1).normal(size=informative.shape)
    assert logme(informative, y) > logme(noise, y) + 0.05
    assert logme(informative * 1000.0, y) == pytest.approx(logme(informative, y), rel=1e-9)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="at least two classes"):
        logme(np.ones((4, 2)), np.zeros(4))
