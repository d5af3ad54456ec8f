"""The advisor on tiny models: candidates, screen and CV, its report, and the published winner
served with the same predictions as its head applied in-process to the cached features."""

import json
import shutil

import numpy as np
import pytest
from server_helpers import running_server

from embedder.cache import load_features
from embedder.client import EmbedderClient, image_item
from embedder.core.manifest import Manifest
from embedder.core.sources import image_folder
from embedder.features import FeaturesConfig
from heads.advise import AdviseConfig, advise
from heads.advise_inputs import embed_backbones
from heads.candidates import FeatureSet, Part, backbone_sets, concatenated
from heads.cli import main as heads_main
from heads.fewshot import pixel_baseline
from heads.persist import load_head, save_head
from heads.publish import publish_features
from heads.train import HeadConfig, _fit, build_pipeline, train_head

BACKBONES = ["tiny_image_layers", "tiny_wide_layers"]


@pytest.fixture(scope="module")
def repo(layers_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("advise") / "models"
    shutil.copytree(layers_repo, folder)
    return folder


@pytest.fixture(scope="module")
def embedded(repo, trained, tmp_path_factory):
    root = trained[0]
    items = list(image_folder(root / "images", labels_from_folders=True))
    config = FeaturesConfig(repo=repo, cache=tmp_path_factory.mktemp("cache"), progress=False)
    return embed_backbones(items, BACKBONES, config), config


def part(name: str, dim: int) -> Part:
    return Part("m", "1", name, dim, f"digest-{name}", name == "c")


def test_a_backbones_candidates_are_its_layers_then_its_deepest_together():
    layers = [(part(n, d), np.full((4, d), i, np.float32)) for i, (n, d) in
              enumerate((("a", 2), ("b", 3), ("c", 5)))]  # fmt: skip
    sets = backbone_sets(layers, ms_per_item=2.0)
    assert [s.name for s in sets] == ["m:a", "m:b", "m:c", "m:b+c", "m:a+b+c"]
    both = sets[3]
    assert both.X.shape == (4, 8) and (both.X[:, :3] == 1).all() and (both.X[:, 3:] == 2).all()
    assert both.passes == 1 and both.ms_per_item == 2.0 and not both.is_default_cut
    assert sets[2].is_default_cut and both.digest != sets[2].digest
    other = FeatureSet((Part("n", "1", "x", 1, "d", True),), np.zeros((4, 1), np.float32), 3.0)
    pair = concatenated([sets[2], other])
    assert pair.passes == 2 and pair.ms_per_item == 5.0 and pair.models == ["m", "n"]


def test_the_advice_is_measured_and_its_winner_beats_every_default_cut(embedded, trained):
    result, _ = embedded
    pixels = np.stack([np.asarray(__import__("PIL.Image").Image.open(s).convert("L"))
                       for s in result.sources])  # fmt: skip
    config = AdviseConfig(folds=3, top=2, svm_top=1, ks=(1, 2), draws=2, jobs=1)
    advice = advise(result.sets, result.y, pixel_baseline(pixels), "raw pixels", config)
    screened = [c for c in advice.candidates if c.head is None]
    measured = [c for c in advice.candidates if c.head]
    assert len(measured) >= 3 and len(screened) >= 1
    assert all(np.isfinite(c.logme) for c in advice.candidates)
    defaults = advice.default_cuts
    assert {d.features.name for d in defaults} == {"tiny_image_layers:2", "tiny_wide_layers:2"}
    assert all(advice.winner.cv_accuracy >= d.cv_accuracy for d in defaults)
    assert [c.cv_accuracy for c in measured] == sorted((c.cv_accuracy for c in measured),
                                                       reverse=True)  # fmt: skip
    assert {c.head for c in measured} == {"logreg", "linear_svc"}
    pairs = [c for c in advice.candidates if c.features.passes == 2]
    assert pairs and all(c.features.ms_per_item > 0 for c in pairs)
    assert len(advice.curves) == 3 and advice.curves[0].baseline == "raw pixels"
    first_baseline = [p.baseline_mean for p in advice.curves[0].points]
    assert all([p.baseline_mean for p in c.points] == first_baseline for c in advice.curves)


def test_the_cli_writes_its_report_and_serves_the_winner_as_measured(repo, trained, tmp_path):
    root = trained[0]
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["advise", "--images", str(root / "images"), "--labels-from-folders", "--backbones",
            ",".join(BACKBONES), "--repo", str(repo), "--cache", str(cache), "--out", str(out),
            "--folds", "3", "--publish", "colours_advised", "--no-progress"]  # fmt: skip
    assert heads_main(argv) == 0
    advice = json.loads((out / "advice.json").read_text())
    winner = advice["winner"]
    assert winner == advice["candidates"][0] and winner["cv_accuracy"] is not None
    assert (out / "advice.png").stat().st_size > 0 and (out / "few_shot.png").stat().st_size > 0
    assert_served_as_in_process(repo, "colours_advised", out / "head", root, cache, winner)


def test_two_backbones_with_their_own_crops_compose_into_one_graph(embedded, repo, trained,
                                                                   tmp_path):  # fmt: skip
    """The pair's graph decodes once and crops twice (32 px and 40 px): served, its features
    are the two cached sets side by side, and its head predicts as in-process."""
    result, config = embedded
    pair = concatenated([result.sets[b][2] for b in BACKBONES])  # each backbone's deepest
    head = train_head(pair.X, result.y, HeadConfig(folds=3))
    folder = save_head(head, tmp_path / "head", {"digest": pair.digest}, pair.dim)
    publish_features(repo, pair.parts, {"head": folder}, "colours_pair", overwrite=True)
    m = Manifest.read(repo / "colours_pair" / "1")
    assert [i.name for i in m.inputs] == ["pixels", "tiny_wide_layers/pixels"]
    assert m.extra_inputs["tiny_wide_layers/pixels"].size == (40, 40) and m.dim == 48
    images = sorted((trained[0] / "images").rglob("*.png"))
    with running_server(repo) as server, EmbedderClient(server.target) as client:
        served = client.embed_images("colours_pair", [p.read_bytes() for p in images])
        (scores,) = client.classify("colours_pair", [image_item(p) for p in images], top_k=1)
    expected = np.hstack([rows_of(cached(config.cache, b, "2", "run"), images) for b in BACKBONES])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert [t.labels[0] for t in scores.items] == list(head.predict(expected))


def cached(cache, model: str, layer: str, run: str):
    """The cached features of `layer` of `model` (the deepest, "2", is its `features`)."""
    for dataset in (cache / model / "1").iterdir():
        output = json.loads((dataset / "dataset.json").read_text())["output"]
        if output == ("" if layer == "2" else layer):
            return load_features(dataset / "runs" / f"{run}.parquet")
    raise AssertionError(f"no cached {model}:{layer}")


def rows_of(features, images) -> np.ndarray:
    order = {s: i for i, s in enumerate(features.sources)}
    return features.X[[order[str(p)] for p in images]]


def assert_served_as_in_process(repo, name, head_folder, root, cache, winner):
    pipeline, _ = load_head(head_folder)
    images = sorted((root / "images").rglob("*.png"))
    with running_server(repo) as server, EmbedderClient(server.target) as client:
        (scores,) = client.classify(name, [image_item(p) for p in images], top_k=1)
        served = client.embed_images(name, [p.read_bytes() for p in images])
    columns = [
        rows_of(cached(cache, *spec.split(":"), "advise"), images) for spec in winner["layers"]
    ]  # model:layer, in column order
    expected_features = np.hstack(columns)
    np.testing.assert_allclose(served, expected_features, atol=1e-5)  # concatenation order
    assert [t.labels[0] for t in scores.items] == list(pipeline.predict(expected_features))


def test_a_linear_head_fitted_in_the_row_space_is_the_same_model():
    """More columns than rows: fitted on X @ basis, its weights written back, it predicts as
    the plain fit (tight tolerances, so both solvers reach the optimum)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    X = rng.normal(size=(60, 200)).astype(np.float32)
    X[:, :3] += 2 * np.eye(3)[y]
    for kind in ("logreg", "linear_svc"):
        config = HeadConfig(kind=kind, tol=1e-10, max_iter=100_000)
        projected, plain = _fit(config, 0.1, X, y), build_pipeline(config, 0.1).fit(X, y)
        test = rng.normal(size=(40, 200)).astype(np.float32)
        np.testing.assert_allclose(projected.decision_function(test),
                                   plain.decision_function(test), atol=2e-3)  # fmt: skip
        assert projected[-1].coef_.shape == plain[-1].coef_.shape == ((3, 200))
