"""A head published with its OOD scorer: the score is in the graph and every door reports it,
equal to the scorer applied in-process to the backbone's features."""

import io

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from PIL import Image
from server_helpers import running_server

from embedder.cache import load_features
from embedder.client import EmbedderClient, image_item
from embedder.client.cli import client_main
from embedder.core.manifest import Manifest
from heads.cli import main as heads_main
from heads.ood import OODConfig, fit_ood
from heads.persist import save_head
from heads.publish import publish
from heads.train import HeadConfig, train_head


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def published(tiny_repo, trained, tmp_path_factory):
    root, dataset, _ = trained
    features = load_features(dataset)
    scorer = fit_ood(features.X, features.y, OODConfig(folds=3))
    head = train_head(features.X, features.y, HeadConfig(folds=3))
    backbone = {"model": "tiny_image", "version": "1", "digest": dataset.name}
    folder = save_head(head, tmp_path_factory.mktemp("h") / "colour", backbone,
                       features.X.shape[1], scorer)  # fmt: skip
    repo = tmp_path_factory.mktemp("ood") / "models"
    publish(tiny_repo / "tiny_image" / "1", {"colour": folder}, repo, "colours")
    rng = np.random.default_rng(0)
    inside = [p.read_bytes() for p in sorted((root / "images").rglob("*.png"))[::6]]
    outside = [png(rng.integers(0, 256, (40, 40, 3))),
               png(np.tile(np.linspace(0, 255, 40), (40, 1))[..., None].repeat(3, 2))]  # fmt: skip
    return repo, folder, scorer, inside + outside


def test_the_manifest_and_every_door_carry_the_score(published, tiny_repo):
    repo, _, scorer, images = published
    spec = Manifest.read(repo / "colours" / "1").heads["colour"]
    assert spec.ood_kind == "mahalanobis" and spec.ood_threshold == pytest.approx(scorer.threshold)
    with running_server(repo, http_address="127.0.0.1:0") as server:
        with EmbedderClient(server.target) as client:
            (result,) = client.classify("colours", [image_item(b) for b in images], top_k=2)
            features = client.embed_images("colours", images)
        http = f"127.0.0.1:{server.server.http_port}"
        by_door = {}
        for module, client in ((thttp, thttp.InferenceServerClient(http)),
                               (tgrpc, tgrpc.InferenceServerClient(server.target))):  # fmt: skip
            tensor = module.InferInput("image", [len(images)], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=object))
            by_door[module.__name__] = client.infer("colours", [tensor]).as_numpy("colour_ood")
        meta = thttp.InferenceServerClient(http).get_model_metadata("colours")
    expected = scorer.score(features)
    assert result.ood_scored and result.ood_threshold == pytest.approx(scorer.threshold)
    got = np.array([item.ood_score for item in result.items])
    np.testing.assert_allclose(got, expected, rtol=1e-3)  # float32 sums in another order
    assert [item.unknown for item in result.items] == list(expected > scorer.threshold)
    assert [item.unknown for item in result.items][-2:] == [True, True]  # noise, a gradient
    for scores in by_door.values():
        assert scores.shape == (len(images),)
        np.testing.assert_allclose(scores, expected, rtol=1e-3)
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["colour_ood"]["shape"] == [-1]
    assert float(meta["parameters"]["colour.ood_threshold"]) == pytest.approx(scorer.threshold)


def test_the_clis_say_known_or_unknown(published, trained, tmp_path, capsys):
    repo, folder, _, images = published
    files = []
    for i, data in enumerate(images[-3:]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(data)
    with running_server(repo) as server:
        argv = ["--server", server.target, "classify", "--model", "colours", "--images",
                *map(str, files)]  # fmt: skip
        assert client_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("\tood=" in line for line in lines)
    assert lines[0].split("\t")[-1] == "known" and lines[-1].split("\t")[-1] == "unknown"
    assert heads_main(["predict", "--head", str(folder), "--features", str(trained[1])]) == 0
    predicted = capsys.readouterr().out.strip().splitlines()
    assert predicted and all(line.split("\t")[-1] in ("known", "unknown") for line in predicted)
