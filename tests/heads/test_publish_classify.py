"""Train heads on cached embeddings, publish backbone + heads, Classify through a real server."""

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from server_helpers import running_server

from embedder.cache import load_features
from embedder.client import EmbedderClient, embed_request, image_item
from embedder.core.manifest import Manifest
from embedder.core.sources import image_folder
from embedder.features import FeaturesConfig, export_features
from heads import HeadConfig, train_head
from heads.cli import main as heads_main
from heads.errors import FeatureError
from heads.persist import save_head, scores_of
from heads.publish import backbone_digest, publish
from protos.embedder.v1 import embedder_pb2 as pb


def test_published_classify_equals_sklearn(tiny_repo, trained, tmp_path):
    root, dataset, heads = trained
    repo = tmp_path / "models"
    publish(
        tiny_repo / "tiny_image" / "1",
        {"colour": heads["logreg"], "colour_svm": heads["linear_svc"]},
        repo,
        "tiny_colours",
    )
    m = Manifest.read(repo / "tiny_colours" / "1")
    assert list(m.heads) == ["colour", "colour_svm"] and m.heads["colour"].classes == (
        "blue",
        "green",
        "red",
    )
    from heads.persist import load_head

    images = sorted((root / "images").rglob("*.png"))
    backbone = ort.InferenceSession(
        str(tiny_repo / "tiny_image" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    from embedder.core.preprocess import preprocess_image_bytes

    pixels = np.stack([preprocess_image_bytes(p.read_bytes(), m.preprocess) for p in images])
    features = backbone.run(["features"], {"pixels": pixels})[0]
    with running_server(repo) as server, EmbedderClient(server.target) as client:
        request = pb.ClassifyRequest(
            model="tiny_colours", items=[image_item(p) for p in images], top_k=3
        )
        response = client.stub.Classify(request)
        embedded = client.embed(embed_request("tiny_colours", [image_item(p) for p in images[:2]]))
        info = client.stub.GetModel(pb.GetModelRequest(model="tiny_colours"))
    assert list(info.heads) == ["colour", "colour_svm"]
    np.testing.assert_allclose(embedded.embeddings, features[:2], atol=1e-5)  # Embed still works
    for result, kind in zip(response.heads, ("logreg", "linear_svc"), strict=True):
        pipeline, _ = load_head(heads[kind])
        expected = pipeline.predict(features)
        got = np.array([item.labels[0] for item in result.items])
        assert (got == expected).all()  # 100 % agreement
        scores = scores_of(pipeline, features)
        classes = list(pipeline.classes_)
        served = np.array(
            [
                [dict(zip(it.labels, it.scores, strict=True))[c] for c in classes]
                for it in result.items
            ]
        )
        np.testing.assert_allclose(served, scores, atol=1e-4)
    assert (
        response.heads[0].score_kind == "probability" and response.heads[1].score_kind == "decision"
    )


def test_classify_picks_heads_and_reports_unknown_ones(tiny_repo, trained, tmp_path):
    _, _, heads = trained
    repo = tmp_path / "models"
    publish(tiny_repo / "tiny_image" / "1", {"colour": heads["logreg"]}, repo, "tiny_colours")
    item = image_item(np.zeros((32, 32, 3), np.uint8))
    with running_server(repo) as server, EmbedderClient(server.target) as client:
        one = client.stub.Classify(
            pb.ClassifyRequest(model="tiny_colours", items=[item], heads=["colour"])
        )
        assert len(one.heads) == 1 and len(one.heads[0].items[0].labels) == 1
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Classify(
                pb.ClassifyRequest(model="tiny_colours", items=[item], heads=["nope"])
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "colour" in err.value.details()


def test_classify_on_a_model_without_heads(tiny_server):
    with EmbedderClient(tiny_server.target) as client, pytest.raises(grpc.RpcError) as err:
        client.stub.Classify(pb.ClassifyRequest(model="tiny_image", items=[pb.Item(image=b"x")]))
    assert (
        err.value.code() == grpc.StatusCode.NOT_FOUND
        and "embedder-heads publish" in err.value.details()
    )


def test_publish_refuses_a_head_of_another_backbone(tiny_repo, trained, tmp_path):
    _, _, heads = trained
    features = np.random.default_rng(0).standard_normal((30, 24)).astype(np.float32)
    other = save_head(
        train_head(features, np.repeat(["a", "b", "c"], 10), HeadConfig(folds=3)),
        tmp_path / "other",
        {"model": "x", "digest": "0123456789abcdef"},
        24,
    )
    with pytest.raises(FeatureError, match="0123456789abcdef"):
        publish(tiny_repo / "tiny_image" / "1", {"bad": other}, tmp_path / "models", "bad")
    assert not (tmp_path / "models" / "bad" / "1").exists()


def test_backbone_digest_is_the_cache_digest(tiny_repo, trained):
    _, dataset, _ = trained
    assert backbone_digest(Manifest.read(tiny_repo / "tiny_image" / "1")) == dataset.name


def test_publish_cli(tiny_repo, trained, tmp_path, capsys):
    _, _, heads = trained
    argv = [
        "publish",
        "--backbone",
        str(tiny_repo / "tiny_image" / "1"),
        "--head",
        f"colour={heads['logreg']}",
        "--repo",
        str(tmp_path),
        "--name",
        "tiny_colours",
    ]
    assert heads_main(argv) == 0
    assert heads_main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert heads_main([*argv[:3], "--head", "no-equals-sign", *argv[5:]]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.distributed)])
def test_batch_export_of_a_published_model_writes_its_backbone_features(
    tiny_repo, trained, tmp_path, engine
):
    if engine == "ray":
        pytest.importorskip("ray")
    root, dataset, heads = trained
    repo = tmp_path / "models"
    publish(tiny_repo / "tiny_image" / "1", {"colour": heads["logreg"]}, repo, "tiny_colours")
    config = FeaturesConfig(repo=repo, model="tiny_colours", cache=tmp_path / "cache",
                               progress=False, engine=engine)  # fmt: skip
    summary = export_features(image_folder(root / "images", True), config)
    published, backbone = load_features(summary.dataset), load_features(dataset)
    assert published.X.shape == backbone.X.shape == (36, 24)  # features only, no head scores
    order_p, order_b = np.argsort(published.sources), np.argsort(backbone.sources)
    np.testing.assert_allclose(published.X[order_p], backbone.X[order_b], atol=1e-5)
