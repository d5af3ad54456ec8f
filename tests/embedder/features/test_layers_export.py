"""Batch export of a model exported at several layers: each cut point its own cached feature
set, from one decode and one forward pass per item."""

import shutil

import numpy as np
import pytest
from image_files import make_images

from embedder.cache import CacheIdentity, dataset_folder, load_features
from embedder.core.errors import EmbedderError
from embedder.core.inputs import Preprocessor, RawItem
from embedder.core.manifest import Manifest
from embedder.core.runtime import cpu_session
from embedder.core.sources import image_folder
from embedder.features import FeaturesConfig, export_features

LAYERS = ["0", "1", "2"]


def config(repo, cache, **kw):
    return FeaturesConfig(repo=repo, cache=cache, batch_size=4, shard_rows=5, progress=False,
                          **kw)  # fmt: skip


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "images")


def session_outputs(repo, paths) -> dict[str, np.ndarray]:
    """Every output of tiny_image_layers for `paths`, computed here, by layer."""
    folder = repo / "tiny_image_layers" / "1"
    m = Manifest.read(folder)
    pre = Preprocessor(m, folder)
    feeds = pre.collate(
        [pre.image(i, RawItem("image", p.read_bytes())) for i, p in enumerate(paths)]
    )
    names = [o.output for o in m.layer_outputs]
    outs = cpu_session(folder / m.file).run(names, feeds)
    return {o.layer: v for o, v in zip(m.layer_outputs, outs, strict=True)}


def test_each_layer_is_its_own_dataset_with_the_graphs_outputs(layers_repo, images, tmp_path):
    cfg = config(layers_repo, tmp_path / "cache", model="tiny_image_layers")
    summary = export_features(image_folder(images, True), cfg)
    assert list(summary.layers) == LAYERS and summary.run_file == summary.layers["2"]
    assert (summary.embedded, summary.failed, summary.duplicates) == (12, 2, 1)
    loaded = {layer: load_features(run) for layer, run in summary.layers.items()}
    assert [f.X.shape[1] for f in loaded.values()] == [8, 16, 24]
    keys = loaded["2"].keys
    assert all(np.array_equal(f.keys, keys) and np.array_equal(f.y, loaded["2"].y)
               for f in loaded.values())  # fmt: skip
    expected = session_outputs(layers_repo, [images / s.split("images/")[1]
                                             for s in loaded["2"].sources])  # fmt: skip
    for layer, features in loaded.items():
        np.testing.assert_allclose(features.X, expected[layer], atol=1e-6)
    digests = {dataset_folder(run).name for run in summary.layers.values()}
    assert len(digests) == 3
    # the deepest is `features`, what a server serves and caches: one dataset for both
    m = Manifest.read(layers_repo / "tiny_image_layers" / "1")
    assert dataset_folder(summary.run_file).name == CacheIdentity.of(m, m.sha256).digest


def test_an_item_counts_as_cached_only_when_every_layer_holds_it(layers_repo, images, tmp_path):
    cfg = config(layers_repo, tmp_path / "cache", model="tiny_image_layers")
    first = export_features(image_folder(images, True), cfg)
    again = export_features(image_folder(images, True), cfg)
    assert (again.embedded, again.from_cache) == (0, 12)
    shutil.rmtree(dataset_folder(first.layers["1"]))
    healed = export_features(image_folder(images, True), cfg)
    assert (healed.embedded, healed.from_cache) == (12, 0)
    assert load_features(healed.layers["1"]).X.shape == (12, 16)
    assert load_features(healed.layers["0"]).X.shape == (12, 8)  # rows kept once


def test_the_server_engine_refuses_a_model_of_several_layers(layers_repo, images, tmp_path):
    from server_helpers import running_server

    with running_server(layers_repo) as server:
        cfg = config(layers_repo, tmp_path / "c", model="tiny_image_layers", engine="server",
                     server=server.target)  # fmt: skip
        with pytest.raises(EmbedderError, match="several layers"):
            export_features(image_folder(images, True), cfg)


@pytest.mark.distributed
def test_ray_engine_writes_every_layer_as_the_local_one_does(layers_repo, images, tmp_path):
    pytest.importorskip("ray")
    local = export_features(image_folder(images, True),
                            config(layers_repo, tmp_path / "a", model="tiny_image_layers"))  # fmt: skip
    on_ray = export_features(image_folder(images, True),
                             config(layers_repo, tmp_path / "r", model="tiny_image_layers",
                                    engine="ray"))  # fmt: skip
    assert list(on_ray.layers) == LAYERS and on_ray.embedded == 12
    for layer in LAYERS:
        a, b = load_features(local.layers[layer]), load_features(on_ray.layers[layer])
        assert np.array_equal(a.keys, b.keys)
        np.testing.assert_allclose(a.X, b.X, atol=1e-6)
