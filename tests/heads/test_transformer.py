"""Embeddings as a scikit-learn transformer, locally and through a real server."""

import pickle

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from heads.transformer import Embeddings


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for label, colour in (("warm", (220, 80, 20)), ("cold", (20, 80, 220))):
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.integers(-50, 50, (36, 36, 3)), 0, 255)
            path = root / f"{label}{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths.append(str(path))
            labels.append(label)
    return paths, np.array(labels)


@pytest.mark.parametrize(
    "check",
    [
        check_parameters_default_constructible,
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
    ],
)
def test_sklearn_estimator_checks(check):
    check("Embeddings", Embeddings())


def test_pipeline_with_logistic_regression(tiny_repo, images):
    paths, y = images
    pipe = make_pipeline(
        Embeddings("tiny_image", repo=tiny_repo), LogisticRegression(max_iter=1000)
    )
    scores = cross_val_score(pipe, paths, y, cv=2)  # clones the transformer per fold
    assert scores.mean() > 0.9
    fitted = pipe.fit(paths, y)
    assert fitted[0].dim_ == 24 and list(fitted[0].get_feature_names_out()[:2]) == [
        "tiny_image_0",
        "tiny_image_1",
    ]


def test_inputs_paths_bytes_and_arrays_agree(tiny_repo, images):
    paths, _ = images
    emb = Embeddings("tiny_image", repo=tiny_repo).fit(None)
    raw = [open(p, "rb").read() for p in paths[:3]]
    arrays = [np.asarray(Image.open(p)) for p in paths[:3]]
    np.testing.assert_allclose(emb.transform(paths[:3]), emb.transform(raw), atol=1e-6)
    np.testing.assert_allclose(emb.transform(paths[:3]), emb.transform(arrays), atol=1e-5)
    assert emb.transform([]).shape == (0, 24)


def test_server_and_local_agree_and_pickle_round_trip(tiny_repo, tiny_server, images):
    paths, _ = images
    local = Embeddings("tiny_image", repo=tiny_repo, normalize=True).fit(paths)
    remote = Embeddings("tiny_image", server=tiny_server.target, normalize=True).fit(paths)
    np.testing.assert_allclose(local.transform(paths[:4]), remote.transform(paths[:4]), atol=1e-5)
    again = pickle.loads(pickle.dumps(local))
    np.testing.assert_allclose(again.transform(paths[:2]), local.transform(paths[:2]), atol=1e-6)
    assert clone(local).get_params() == local.get_params()


def test_text_model_equals_the_onnx_session_locally_and_through_the_server(tiny_repo, tiny_server):
    import onnxruntime as ort

    from embedder.core.manifest import Manifest
    from embedder.core.preprocess import TextTokenizer

    texts = ["the cat sat on the mat", "dog"]  # padded together in one batch
    folder = tiny_repo / "tiny_text" / "1"
    tok = TextTokenizer(folder / "tokenizer.json", Manifest.read(folder).preprocess)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    alone = np.concatenate([session.run(["features"], tok([t]))[0] for t in texts])
    local = Embeddings("tiny_text", repo=tiny_repo).fit(["x"]).transform(texts)
    remote = Embeddings("tiny_text", server=tiny_server.target).fit(["x"]).transform(texts)
    assert local.shape == (2, 32)
    np.testing.assert_allclose(local, alone, atol=1e-5)
    np.testing.assert_allclose(remote, alone, atol=1e-5)


def test_unfitted_transform_is_an_error():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        Embeddings().transform(["a"])
