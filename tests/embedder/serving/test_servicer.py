"""A real gRPC server on a free port, tiny models, real clients."""

import io
import json
import os
import re
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from server_helpers import free_port, running_server, self_signed_cert

from embedder.client import (
    EmbedderClient,
    StreamItemError,
    decode,
    embed_request,
    image_item,
)
from embedder.core.manifest import Manifest
from embedder.core.preprocess import TextTokenizer, preprocess_image_bytes
from embedder.engine.config import BatchingConfig
from protos.embedder.v1 import embedder_pb2 as pb


def png(color=(10, 200, 30), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.putpixel((3, 3), (255, 255, 255))
    img.save(buf, "PNG")
    return buf.getvalue()


def in_process(repo, name, feeds):
    return ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(["features"], feeds)[0]


def expect_status(code, fn, *args, match=""):
    with pytest.raises(grpc.RpcError) as err:
        fn(*args)
    assert err.value.code() == code, err.value.details()
    assert match in err.value.details()
    return err.value.details()


@pytest.fixture(scope="module")
def client(tiny_server):
    with EmbedderClient(tiny_server.target) as c:
        yield c


def test_list_and_get_model(client):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"tiny_image", "tiny_text"}
    image = models["tiny_image"]
    assert (image.modality, image.dim, image.version, image.precision) == ("image", 24, "1", "fp32")
    assert image.providers == ["CPUExecutionProvider"]
    cores = len(os.sched_getaffinity(0))  # automatic: one single-threaded stream per core
    assert (image.batching.max_batch_size, image.batching.inference_streams) == (32, cores)
    assert json.loads(image.preprocess_json)["size"] == [32, 32]
    info = client.stub.GetModel(pb.GetModelRequest(model="tiny_text"))
    assert (info.modality, info.dim) == ("text", 32)


def test_image_embeddings_equal_in_process(client, tiny_repo):
    images = [png((i * 40, 100, 255 - i * 40)) for i in range(5)]
    result = client.embed(
        embed_request("tiny_image", [pb.Item(id=f"im{i}", image=b) for i, b in enumerate(images)])
    )
    cfg = Manifest.read(tiny_repo / "tiny_image" / "1").preprocess
    pixels = np.stack([preprocess_image_bytes(b, cfg) for b in images])
    np.testing.assert_allclose(
        result.embeddings, in_process(tiny_repo, "tiny_image", {"pixels": pixels}), atol=1e-5
    )
    assert result.ids == [f"im{i}" for i in range(5)]
    assert result.cache_hits == [False] * 5
    assert result.timing.batch_items >= 1 and result.timing.total_ms > 0


def test_text_embeddings_equal_in_process(client, tiny_repo):
    texts = ["the cat sat on the mat", "dog", "stock market fell"]
    ours = client.embed_texts("tiny_text", texts)
    folder = tiny_repo / "tiny_text" / "1"
    feeds = TextTokenizer(folder / "tokenizer.json", Manifest.read(folder).preprocess)(texts)
    np.testing.assert_allclose(ours, in_process(tiny_repo, "tiny_text", feeds), atol=1e-5)


def test_raw_tensor_items(client, tiny_repo):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ours = client.embed_images("tiny_image", list(pixels))
    np.testing.assert_allclose(
        ours, in_process(tiny_repo, "tiny_image", {"pixels": pixels}), atol=1e-5
    )


def test_truncate_and_normalize(client):
    full = client.embed_images("tiny_image", [png()])
    cut = client.embed_images("tiny_image", [png()], truncate_dim=8, normalize=True)
    assert cut.shape == (1, 8)
    np.testing.assert_allclose(cut[0], full[0, :8] / np.linalg.norm(full[0, :8]), atol=1e-6)
    too_many = lambda: client.embed_images("tiny_image", [png()], truncate_dim=99)  # noqa: E731
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, too_many, match="truncate_dim 99")


@pytest.mark.parametrize(
    "items,match",
    [
        ([pb.Item(image=b"\x89PNG broken")], "item 0: cannot decode image"),
        ([pb.Item(image=png()), pb.Item(text="hello")], "item 1: text sent to image model"),
        ([pb.Item(image=png()), pb.Item()], "item 1: no input"),
        ([image_item(np.zeros((31, 32, 3), np.uint8))], "item 0: tensor uint8[31, 32, 3]"),
        ([image_item(np.zeros((32, 32, 3), np.float32))], "item 0: tensor float32"),
        (
            [pb.Item(tensor=pb.Tensor(data=b"123", shape=[2, 2], dtype="uint8"))],
            "item 0: bad tensor",
        ),
        ([], "empty request"),
        ([pb.Item(image=png())] * 300, "300 items, over the limit of 256"),
    ],
)
def test_invalid_argument_names_the_item(client, items, match):
    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.embed,
        embed_request("tiny_image", items),
        match=match,
    )


def test_image_sent_to_text_model(client):
    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.embed,
        embed_request("tiny_text", [pb.Item(text="ok"), pb.Item(image=png())]),
        match="item 1: image sent to text model",
    )


def test_empty_text(client):
    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.embed_texts,
        "tiny_text",
        ["fine", "  "],
        match="item 1: empty text",
    )


def test_unknown_model_and_version(client):
    expect_status(
        grpc.StatusCode.NOT_FOUND, client.embed_texts, "nope", ["x"], match="tiny_image, tiny_text"
    )
    expect_status(
        grpc.StatusCode.NOT_FOUND,
        client.stub.GetModel,
        pb.GetModelRequest(model="tiny_text", version="7"),
        match="no version '7'",
    )


def test_one_bad_request_does_not_disturb_concurrent_good_ones(client, tiny_repo):
    good = png((1, 2, 3))
    expected = client.embed_images("tiny_image", [good])
    errors, results = [], []

    def worker(i):
        try:
            if i % 4 == 0:
                client.embed(embed_request("tiny_image", [pb.Item(image=b"garbage")]))
            else:
                results.append(client.embed_images("tiny_image", [good]))
        except grpc.RpcError as exc:
            errors.append(exc.code())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [grpc.StatusCode.INVALID_ARGUMENT] * 8
    assert len(results) == 24
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


def test_concurrent_clients_get_their_own_answers(tiny_server, tiny_repo):
    check_concurrent_clients(tiny_server.target, tiny_repo)


def test_two_inference_streams_give_every_client_its_own_answer(tiny_repo):
    batching = BatchingConfig(max_batch_size=4, inference_streams=2)
    with running_server(tiny_repo, batching=batching, intra_op_threads=1) as server:
        check_concurrent_clients(server.target, tiny_repo)
        with EmbedderClient(server.target) as c:
            assert {m.batching.inference_streams for m in c.list_models()} == {2}


def check_concurrent_clients(target, tiny_repo):
    images = [png((i * 7 % 256, i * 13 % 256, i * 29 % 256)) for i in range(32)]
    cfg = Manifest.read(tiny_repo / "tiny_image" / "1").preprocess
    expected = in_process(
        tiny_repo,
        "tiny_image",
        {"pixels": np.stack([preprocess_image_bytes(b, cfg) for b in images])},
    )
    got = [None] * 32

    def worker(i):
        with EmbedderClient(target) as c:
            got[i] = c.embed_images("tiny_image", [images[i]])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


def test_embed_stream_answers_in_order_and_survives_a_bad_request(client):
    requests = [
        embed_request("tiny_image", [pb.Item(image=png((i, 0, 0)))], request_id=f"r{i}")
        for i in range(5)
    ]
    requests.insert(2, embed_request("tiny_image", [pb.Item(image=b"bad")], request_id="bad"))
    requests.insert(4, embed_request("missing", [pb.Item(text="x")], request_id="missing"))
    responses = list(client.stub.EmbedStream(iter(requests)))
    assert len(responses) == 7
    assert [r.request_id for r in responses if not r.HasField("error")] == [
        f"r{i}" for i in range(5)
    ]
    assert responses[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert responses[4].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert [responses[2].request_id, responses[4].request_id] == ["bad", "missing"]
    with pytest.raises(StreamItemError, match="INVALID_ARGUMENT"):
        decode(responses[2])
    single = client.embed_images("tiny_image", [png((3, 0, 0))])
    np.testing.assert_allclose(decode(responses[5]).embeddings, single, atol=1e-5)


def test_health_serving_and_reflection(tiny_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(tiny_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "embedder.v1.Embedder", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert {"embedder.v1.Embedder", "grpc.health.v1.Health",
                "inference.GRPCInferenceService"} <= set(services)  # fmt: skip
        v2 = database.FindFileContainingSymbol("inference.GRPCInferenceService")  # as grpcurl does
        assert "ModelInfer" in [m.name for m in v2.service[0].method]


def test_message_over_the_limit(tiny_repo):
    with (
        running_server(tiny_repo, max_message_bytes=50_000) as server,
        EmbedderClient(server.target) as c,
    ):
        big = pb.Item(image=b"\0" * 60_000)
        expect_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED, c.embed, embed_request("tiny_image", [big])
        )


def held_decodes(monkeypatch, release: threading.Event | None = None,
                 held=lambda data: True) -> tuple[threading.Event, list[bytes]]:  # fmt: skip
    """Every image decode records its bytes and sets the event returned as it starts; given
    `release`, those that `held` picks wait for it first (30 s at most)."""
    import embedder.core.inputs

    started, seen = threading.Event(), []
    real = embedder.core.inputs.preprocess_image_bytes

    def decode(data, *args):
        seen.append(data)
        started.set()
        if release is not None and held(data):
            release.wait(30)
        return real(data, *args)

    monkeypatch.setattr(embedder.core.inputs, "preprocess_image_bytes", decode)
    return started, seen


def test_queue_full_is_refused_at_once(tiny_repo, monkeypatch):
    """Three items wait a minute for a fourth to fill their batch: two more are refused while
    they wait (not queued until there is room), and the fourth, let in, rides with them."""
    decoding, _ = held_decodes(monkeypatch)
    batching = BatchingConfig(max_batch_size=4, max_queue_delay_ms=60_000, max_queue_size=4)
    with (
        running_server(tiny_repo, batching=batching) as server,
        EmbedderClient(server.target, timeout=20) as c,  # a wait for room would run out
    ):
        answers = []
        three = embed_request("tiny_image", [pb.Item(image=png())] * 3)
        waiting = threading.Thread(target=lambda: answers.append(c.embed(three)))
        waiting.start()
        assert decoding.wait(20)  # the three hold their room from before their decoding
        expect_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            c.embed_images,
            "tiny_image",
            [png()] * 2,
            match="retry with backoff",
        )
        assert waiting.is_alive() and not answers  # the three were still waiting
        assert _metric(server, "embedder_items_total", model="tiny_image/1") == 0
        fourth = c.embed(embed_request("tiny_image", [pb.Item(image=png())]))
        waiting.join(20)
        assert [a.timing.batch_items for a in (*answers, fourth)] == [4, 4]
        assert answers[0].embeddings.shape == (3, 24)


def test_bearer_token(tiny_repo):
    with running_server(tiny_repo, auth_token="s3cret") as server:
        with EmbedderClient(server.target) as anonymous:
            expect_status(grpc.StatusCode.UNAUTHENTICATED, anonymous.list_models)
            expect_status(
                grpc.StatusCode.UNAUTHENTICATED, lambda: list(anonymous.stub.EmbedStream(iter([])))
            )
        with EmbedderClient(server.target, token="wrong") as wrong:
            expect_status(grpc.StatusCode.UNAUTHENTICATED, wrong.list_models)
        with EmbedderClient(server.target, token="s3cret") as good:
            assert len(good.list_models()) == 2
        with grpc.insecure_channel(server.target) as channel:  # probes need no token
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_tls(tiny_repo, tmp_path):
    key, cert = self_signed_cert(tmp_path)
    with running_server(tiny_repo, tls_cert=cert, tls_key=key, auth_token="t") as server:
        with EmbedderClient(server.target, token="t", root_cert=cert.read_bytes()) as c:
            assert c.embed_images("tiny_image", [png()]).shape == (1, 24)
        with EmbedderClient(server.target, token="t") as plaintext:
            with pytest.raises(grpc.RpcError):
                plaintext.list_models()
        from embedder.client.cli import client_main

        argv = ["--server", server.target, "--token", "t", "--root-cert", str(cert), "models"]
        assert client_main(argv) == 0


def test_metrics_endpoint(tiny_repo):
    port = free_port()
    with (
        running_server(tiny_repo, metrics_address=str(port)) as server,
        EmbedderClient(server.target) as c,
    ):
        c.embed_images("tiny_image", [png()] * 3)
        with pytest.raises(grpc.RpcError):
            c.embed(embed_request("nope", [pb.Item(text="x")]))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'embedder_requests_total{method="Embed",protocol="embedder.v1"}' in text
    assert 'embedder_errors_total{code="NOT_FOUND",method="Embed",protocol="embedder.v1"}' in text
    assert 'embedder_items_total{model="tiny_image/1"} 3.0' in text
    assert "embedder_batch_items_bucket" in text and 'stage="inference"' in text
    # Each model's share of the cores under load is read from this (bench/fairness_bench.py).
    cpu = re.search(r'embedder_inference_cpu_seconds_total\{model="tiny_image/1"\} (\S+)', text)
    assert cpu and float(cpu.group(1)) > 0


def test_corrupt_model_refused_others_served(tiny_repo, tmp_path, caplog):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    shutil.copytree(repo / "tiny_image", repo / "broken")
    with open(repo / "broken" / "1" / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    with (
        caplog.at_level("ERROR"),
        running_server(repo) as server,
        EmbedderClient(server.target) as c,
    ):
        assert {m.name for m in c.list_models()} == {"tiny_image", "tiny_text"}
        assert "broken/1" in server.server.engine.repository.refused
    assert "refusing model broken/1" in caplog.text and "sha256" in caplog.text


def test_int8_variant_served_on_request(tiny_repo):
    with (
        running_server(tiny_repo, cpu_precision="int8") as server,
        EmbedderClient(server.target) as c,
    ):
        precisions = {m.name: m.precision for m in c.list_models()}
        assert precisions == {"tiny_image": "int8", "tiny_text": "fp32"}  # text has no int8 file
        assert c.embed_images("tiny_image", [png()]).shape == (1, 24)


def test_empty_repository_is_an_error(tmp_path):
    from embedder.core.errors import EmbedderError

    with pytest.raises(EmbedderError, match="no servable model"):
        with running_server(tmp_path):
            pass


def test_request_larger_than_the_queue_is_told_to_split(tiny_repo):
    batching = BatchingConfig(max_batch_size=4, max_queue_size=4)
    with running_server(tiny_repo, batching=batching) as server, EmbedderClient(server.target) as c:
        six = embed_request("tiny_image", [pb.Item(image=png())] * 6)
        expect_status(grpc.StatusCode.INVALID_ARGUMENT, c.embed, six, match="split the request")
        assert c.embed_images("tiny_image", [png()] * 6).shape == (6, 24)  # the client splits


def test_failed_start_releases_the_port(tiny_repo):
    import socket

    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        with (
            pytest.raises(OSError),
            running_server(tiny_repo, address=f"127.0.0.1:{port}", metrics_address=str(taken)),
        ):
            pass
    finally:
        blocker.close()
    with running_server(tiny_repo, address=f"127.0.0.1:{port}") as server:  # the port is free again
        assert server.server.port == port


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="this machine has CUDA",
)
def test_cuda_requested_without_it_fails_the_start_once(tiny_repo):
    from embedder.core.runtime import ProviderError

    with pytest.raises(ProviderError, match="'cuda' requested .* install onnxruntime-gpu"):
        with running_server(tiny_repo, provider="cuda"):
            pass


def test_every_model_refused_is_named(tmp_path):
    from embedder.core.errors import EmbedderError

    folder = tmp_path / "broken" / "1"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(EmbedderError, match=r"every model was refused \(broken/1: "):
        with running_server(tmp_path):
            pass


def test_truncation_keeps_a_normalized_model_unit_length(client):
    texts = ["a dog runs", "a cat sleeps"]
    full = client.embed_texts("tiny_text", texts)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1, atol=1e-5)  # normalised model
    cut = client.embed_texts("tiny_text", texts, truncate_dim=8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    raw = client.embed_images("tiny_image", [png()], truncate_dim=8)  # not normalised: kept as is
    np.testing.assert_allclose(raw, client.embed_images("tiny_image", [png()])[:, :8], atol=1e-6)


def _metric(server, name, **labels):
    return server.server.metrics.registry.get_sample_value(name, labels) or 0


def test_an_answer_over_the_message_limit_is_refused_before_compute(tiny_repo):
    with (
        running_server(tiny_repo, max_message_bytes=20_000) as server,
        EmbedderClient(server.target) as c,
    ):
        texts = [f"text {i}" for i in range(200)]  # 200 x 32 floats: over 20 kB of answer
        request = embed_request("tiny_text", [pb.Item(text=t) for t in texts])
        assert request.ByteSize() < 5_000
        expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, c.embed, request,
                      match="over the server's message limit of 20000")  # fmt: skip
        assert _metric(server, "embedder_items_total", model="tiny_text/1") == 0  # nothing ran
        assert c.embed_texts("tiny_text", texts).shape == (200, 32)  # the client splits it


def test_one_bad_item_drops_the_rest_of_its_decodes(tiny_repo, monkeypatch):
    """Item 0 fails to decode while the other 40 wait behind it on the one preprocessing
    thread, held there until the client has its error and the server has answered another
    call (its loop drops the decodes a moment after the error goes out): at most the one
    decode that had begun runs. A request sent after it decodes on that thread after whatever
    was left queued, so when it is answered every leftover decode would have run."""
    answered = threading.Event()
    other = png((90, 90, 90))
    _, decoded = held_decodes(monkeypatch, answered, held=lambda data: data == other)
    with (
        running_server(tiny_repo, preprocess_threads=1) as server,
        EmbedderClient(server.target, timeout=20) as c,
    ):
        items = [pb.Item(image=b"junk")] + [pb.Item(image=other)] * 40
        try:
            expect_status(grpc.StatusCode.INVALID_ARGUMENT, c.embed,
                          embed_request("tiny_image", items), match="item 0")  # fmt: skip
            c.list_models()
        finally:
            answered.set()
        assert c.embed_images("tiny_image", [png()]).shape == (1, 24)
    assert decoded[0] == b"junk" and decoded[-1] == png()
    assert decoded.count(other) <= 1, f"{decoded.count(other)} of the 40 were decoded"


def test_items_being_decoded_count_against_the_queue(tiny_repo, monkeypatch):
    """Eight items, their decoding held, take all the queue's room: a ninth is refused while
    they decode (were room taken only after decoding, it would be let in and wait behind them
    until the client's deadline); failed requests give their room back."""
    release = threading.Event()
    decoding, _ = held_decodes(monkeypatch, release)
    batching = BatchingConfig(max_batch_size=8, max_queue_size=8)
    with (
        running_server(tiny_repo, batching=batching, preprocess_threads=1) as server,
        EmbedderClient(server.target, timeout=20) as c,
    ):
        answers = []
        eight = embed_request("tiny_image", [pb.Item(image=png())] * 8)
        worker = threading.Thread(target=lambda: answers.append(c.embed(eight)))
        worker.start()
        try:
            assert decoding.wait(20)
            expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, c.embed_images, "tiny_image",
                          [png()], match="8 items waiting")  # fmt: skip
            assert not answers  # refused while the eight were decoding
        finally:
            release.set()
        worker.join(20)
        assert answers[0].embeddings.shape == (8, 24)
        bad = embed_request("tiny_image", [pb.Item(image=png())] * 7 + [pb.Item(image=b"junk")])
        for _ in range(3):  # failed requests give their room back
            expect_status(grpc.StatusCode.INVALID_ARGUMENT, c.embed, bad, match="item 7")
        assert c.embed_images("tiny_image", [png()] * 8).shape == (8, 24)


def test_one_fast_stream_is_slowed_down_not_refused(tiny_repo):
    batching = BatchingConfig(max_batch_size=8, max_queue_size=32)
    with running_server(tiny_repo, batching=batching) as server, EmbedderClient(server.target) as c:
        requests = [
            embed_request(
                "tiny_text", [pb.Item(text=f"text {i} {j}") for j in range(8)], request_id=str(i)
            )  # fmt: skip
            for i in range(60)
        ]
        responses = list(c.stub.EmbedStream(iter(requests)))
    assert [r.error.message for r in responses if r.HasField("error")] == []
    assert [r.request_id for r in responses] == [str(i) for i in range(60)]


def test_deadline_passed_while_queued_is_counted(tiny_repo):
    batching = BatchingConfig(max_batch_size=8, max_queue_delay_ms=1000)
    with running_server(tiny_repo, batching=batching) as server:
        with EmbedderClient(server.target, timeout=0.2) as c:
            expect_status(grpc.StatusCode.DEADLINE_EXCEEDED, c.embed_images, "tiny_image", [png()])
        for _ in range(20):
            if _metric(server, "embedder_errors_total", protocol="embedder.v1", method="Embed",
                       code="DEADLINE_EXCEEDED"):  # fmt: skip
                break
            time.sleep(0.1)
        assert (
            _metric(
                server,
                "embedder_errors_total",
                protocol="embedder.v1",
                method="Embed",
                code="DEADLINE_EXCEEDED",
            )
            == 1  # fmt: skip
        )
