"""OOD scorers against a direct computation, their ONNX graphs, calibration and reports."""

import numpy as np
import pytest

from embedder.core.runtime import cpu_session
from heads.ood import OODConfig, fit_arrays, fit_ood, score
from heads.ood_graph import ood_graph
from heads.ood_report import evaluate_ood


def blobs(n=60, d=12, classes=3, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    X = rng.normal(size=(len(y), d)) + 4 * np.eye(classes, d)[y] + shift
    return X.astype(np.float32), y


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean():
    from sklearn.covariance import LedoitWolf

    X, y = blobs()
    arrays = fit_arrays("mahalanobis", X, y, OODConfig())
    means = np.stack([X[y == c].mean(0) for c in range(3)]).astype(np.float64)
    precision = LedoitWolf(assume_centered=True).fit(X - means[y]).precision_
    test = np.random.default_rng(1).normal(size=(7, 12)) * 3
    direct = np.array([min((t - m) @ precision @ (t - m) for m in means) for t in test])
    np.testing.assert_allclose(score("mahalanobis", arrays, test.astype(np.float32)), direct,
                               rtol=1e-3)  # fmt: skip


def test_knn_is_one_minus_the_kth_cosine():
    X, y = blobs()
    arrays = fit_arrays("knn", X, y, OODConfig(kind="knn"))
    test = np.random.default_rng(2).normal(size=(5, 12)).astype(np.float32)
    cosines = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (
        X / np.linalg.norm(X, axis=1, keepdims=True)).T  # fmt: skip
    direct = 1 - np.sort(cosines, axis=1)[:, ::-1][:, 4]  # the 5th nearest
    np.testing.assert_allclose(score("knn", arrays, test, k=5), direct, atol=1e-6)
    capped = fit_arrays("knn", X, y, OODConfig(kind="knn", bank=10))
    assert capped["bank"].shape == (10, 12)


@pytest.mark.parametrize("kind", ["mahalanobis", "knn"])
@pytest.mark.parametrize("opset", [14, 18])
def test_the_graph_scores_as_numpy_does(kind, opset):
    X, y = blobs()
    scorer = fit_ood(X, y, OODConfig(kind=kind))
    model = ood_graph(scorer, 12, opset, ir_version=8)
    test = np.random.default_rng(3).normal(size=(9, 12)).astype(np.float32) * 2
    (graph,) = cpu_session(model.SerializeToString()).run(["ood_score"], {"features": test})
    np.testing.assert_allclose(graph, scorer.score(test), rtol=1e-4, atol=1e-4)


def test_the_threshold_is_calibrated_on_held_out_folds_only():
    """Each item scored by a scorer fitted without its fold: the in-sample quantile, which a
    scorer fitted on everything gives, is lower (it has seen the items)."""
    from sklearn.model_selection import StratifiedKFold

    X, y = blobs(n=90)
    config = OODConfig(folds=3, accept=0.9)
    scorer = fit_ood(X, y, config)
    held_out = np.empty(len(y))
    for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
        held_out[test] = score("mahalanobis", fit_arrays("mahalanobis", X[train], y[train],
                                                         config), X[test])  # fmt: skip
    assert scorer.threshold == pytest.approx(np.quantile(held_out, 0.9), rel=1e-6)
    assert scorer.threshold > np.quantile(scorer.score(X), 0.9)
    assert len(scorer.calibration["held_out_accepted_per_fold"]) == 3


def test_far_sets_score_high_and_the_held_out_half_is_accepted_as_calibrated():
    X, y = blobs(n=600, d=8)
    far, _ = blobs(n=300, d=8, seed=5, shift=6.0)
    report = evaluate_ood(X, y, {"far": far})
    (far_set,) = report.sets
    assert far_set.auroc > 0.99 and far_set.accepted < 0.05
    assert abs(report.held_out_accepted - 0.95) < 0.03
    assert "AUROC" in report.table()


def test_a_head_saved_with_its_scorer_loads_it_back(tmp_path):
    from heads.persist import load_head, load_ood, save_head
    from heads.train import HeadConfig, train_head

    X, y = blobs()
    scorer = fit_ood(X, y)
    folder = save_head(train_head(X, y, HeadConfig(folds=3)), tmp_path / "h", {"digest": "d"},
                       12, scorer)  # fmt: skip
    loaded = load_ood(folder, load_head(folder)[1])
    assert loaded.threshold == scorer.threshold and loaded.kind == "mahalanobis"
    np.testing.assert_array_equal(loaded.score(X), scorer.score(X))
    save_head(train_head(X, y, HeadConfig(folds=3)), folder, {"digest": "d"}, 12)
    assert load_ood(folder, load_head(folder)[1]) is None and not (folder / "ood.npz").exists()
