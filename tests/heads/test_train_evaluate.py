"""Heads with real scikit-learn on real (small) data."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits, make_classification

from heads import HeadConfig, train_head
from heads.compare import align, compare
from heads.errors import FeatureError, LabelError, UntrustedFileError
from heads.evaluate import evaluate, write_report
from heads.fewshot import few_shot_curve, pixel_baseline, plot_curve, tfidf_baseline
from heads.persist import head_to_onnx, load_head, save_head, scores_of


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y.astype(str)


@pytest.mark.parametrize("kind", ["logreg", "linear_svc", "rbf_svc"])
def test_each_kind_learns_digits(digits, kind):
    X, y = digits
    head = train_head(X[:1000], y[:1000], HeadConfig(kind=kind, folds=3))
    assert (head.predict(X[1000:]) == y[1000:]).mean() > 0.9
    assert head.C in head.cv_scores and len(head.cv_scores) > 9  # coarse + fine grid
    assert head.cv_scores[head.C] == max(head.cv_scores.values())


def test_c_is_retuned_for_dataset_size():
    X, y = make_classification(400, 50, n_informative=5, n_classes=2, random_state=0)
    small = train_head(X[:20], y[:20], HeadConfig(folds=2))
    large = train_head(X, y, HeadConfig(folds=5))
    # Each picks the best C on its own data: 20 rows ask for stronger regularisation.
    assert small.cv_scores[small.C] == max(small.cv_scores.values())
    assert large.cv_scores[large.C] == max(large.cv_scores.values())
    assert small.C < large.C


@pytest.mark.parametrize(
    "X,y,error,match",
    [
        (np.ones((6, 3)), None, LabelError, "no labels"),
        (np.ones((6, 3)), ["a"] * 6, LabelError, "at least two classes"),
        (np.ones((6, 3)), ["a"] * 5 + ["b"], LabelError, r"\{'b': 1\}.*5 CV folds"),
        (np.array([[1.0, np.nan]] * 10), ["a", "b"] * 5, FeatureError, "NaN or inf"),
        (np.array([[1.0, np.inf]] * 10), ["a", "b"] * 5, FeatureError, "first: \\[0, 1, 2"),
    ],
)
def test_bad_input_is_a_clear_error(X, y, error, match):
    with pytest.raises(error, match=match):
        train_head(X, y, HeadConfig(folds=5))


def test_evaluate_holdout_and_kfold_reports(digits, tmp_path):
    X, y = digits
    holdout = evaluate(X, y, HeadConfig(folds=3), test_size=0.5)
    assert holdout.accuracy > 0.93 and holdout.protocol == "holdout 0.5"
    assert np.array(holdout.confusion).sum() == holdout.n == 899
    kfold = evaluate(X[:600], y[:600], HeadConfig(folds=3), test_size=None, folds=3)
    assert kfold.n == 600 and len(kfold.C) == 3
    json_path, png = write_report(holdout, tmp_path, "digits")
    assert json.loads(json_path.read_text())["macro_f1"] == pytest.approx(holdout.macro_f1)
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def _two_views(seed=0, n=300):
    """Informative features and pure noise for the same labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["a", "b", "c"], n // 3)
    centers = rng.standard_normal((3, 16)) * 3
    good = centers[np.searchsorted(["a", "b", "c"], y)] + rng.standard_normal((n, 16))
    noise = rng.standard_normal((n, 16))
    return good.astype(np.float32), noise.astype(np.float32), y


def test_few_shot_flags_negative_transfer_in_words(tmp_path):
    good, noise, y = _two_views()
    positive = few_shot_curve(
        good, y, pixel_baseline(noise), "good", "noise", ks=[1, 2, 5], draws=3
    )
    assert positive.negative_at == [] and positive.verdict().startswith("positive transfer")
    negative = few_shot_curve(
        noise, y, pixel_baseline(good), "noise", "good", ks=[1, 2, 5], draws=3
    )
    assert negative.negative_at == [1, 2, 5, "all"]
    assert "NEGATIVE TRANSFER at k = 1, 2, 5, all" in negative.verdict()
    assert "negative transfer" in negative.table()
    assert [p.draws for p in negative.points] == [3, 3, 3, 1]
    assert plot_curve(negative, tmp_path / "c.png").stat().st_size > 5000
    assert json.loads(negative.to_json())["negative_at"] == [1, 2, 5, "all"]


def test_tfidf_baseline_fits_on_the_training_draw_only():
    texts = ["cats purr softly", "dogs bark loudly"] * 20 + ["zebra"] * 2
    features = tfidf_baseline(texts)
    train, test = np.arange(40), np.arange(40, 42)
    Xtr, Xte = features(train, test)
    assert Xte.nnz == 0  # "zebra" is not in the training vocabulary
    assert Xtr.shape[0] == 40


def test_compare_ranks_by_cv_with_spread():
    good, noise, y = _two_views()
    keys = np.array([f"k{i}" for i in range(len(y))])
    aligned, labels = align({"noise": (noise, y, keys), "good": (good[::-1], y[::-1], keys[::-1])})
    ranked = compare(aligned, labels, HeadConfig(folds=3), folds=3)
    assert [r.name for r in ranked] == ["good", "noise"]
    assert ranked[0].mean > 0.95 and ranked[1].mean < 0.6 and ranked[0].std >= 0


def test_skops_round_trip_and_onnx_head_match_sklearn(digits, tmp_path):
    X, y = digits
    head = train_head(X[:800], y[:800], HeadConfig(folds=3))
    save_head(head, tmp_path / "h", {"model": "m", "digest": "abc"}, dim=64)
    pipeline, info = load_head(tmp_path / "h")
    np.testing.assert_array_equal(pipeline.predict(X[800:]), head.predict(X[800:]))
    assert info.classes == [str(c) for c in head.classes] and info.backbone["digest"] == "abc"
    onnx_model = head_to_onnx(pipeline, 64)
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    label, scores = session.run(None, {"features": X[800:]})
    np.testing.assert_array_equal(label, pipeline.predict(X[800:]))
    np.testing.assert_allclose(scores, scores_of(pipeline, X[800:]), atol=1e-4)


def test_head_refuses_features_of_another_backbone(digits, tmp_path):
    X, y = digits
    save_head(
        train_head(X[:300], y[:300], HeadConfig(folds=3)),
        tmp_path,
        {"model": "m", "digest": "abc"},
        64,
    )
    _, info = load_head(tmp_path)
    with pytest.raises(FeatureError, match="trained on m \\(digest abc\\)"):
        info.check_backbone({"model": "other", "digest": "def"})


def test_untrusted_skops_file_is_refused(tmp_path):
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    (tmp_path / "head.json").write_text("{}")
    skops.io.dump(make_pipeline(FunctionTransformer(json.dumps)), tmp_path / "head.skops")
    with pytest.raises(UntrustedFileError, match="json.dumps"):
        load_head(tmp_path)


def test_a_function_skops_trusts_by_default_is_refused_too(tmp_path):
    """Fault campaign: FunctionTransformer(numpy.exp) loaded and predicted, though neither
    type is on TRUSTED_TYPES (skops trusts both by default)."""
    import numpy as np
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = np.random.default_rng(0).random((20, 3)), np.arange(20) % 2
    head = make_pipeline(FunctionTransformer(np.exp), LogisticRegression()).fit(X, y)
    (tmp_path / "head.json").write_text("{}")
    skops.io.dump(head, tmp_path / "head.skops")
    with pytest.raises(UntrustedFileError, match="FunctionTransformer.*numpy.exp|numpy.exp"):
        load_head(tmp_path)
