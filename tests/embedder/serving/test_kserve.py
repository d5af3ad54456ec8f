"""KServe v2 / Open Inference Protocol, REST and gRPC, driven by Triton's real tritonclient."""

import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from PIL import Image
from server_helpers import ServerThread, running_server, server_config
from tritonclient.utils import InferenceServerException

from embedder.client import EmbedderClient, embed_request, image_item
from embedder.engine.config import BatchingConfig
from protos.embedder.v1 import embedder_pb2 as pb

TEXTS = [b"the cat sat on the mat", b"stock market fell"]


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def repo(tiny_repo, trained, tmp_path_factory):
    """The tiny models and tiny_colours: tiny_image with two published heads."""
    from heads.publish import publish

    root, _, heads = trained
    folder = tmp_path_factory.mktemp("kserve") / "models"
    shutil.copytree(tiny_repo, folder)
    publish(tiny_repo / "tiny_image" / "1",
            {"colour": heads["logreg"], "colour_svm": heads["linear_svc"]}, folder, "tiny_colours")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def server(repo):
    with running_server(repo, http_address="127.0.0.1:0", metrics_address="0") as s:
        yield s


def clients(server):
    return {"grpc": (tgrpc, tgrpc.InferenceServerClient(server.target)),
            "http": (thttp, thttp.InferenceServerClient(f"127.0.0.1:{server.server.http_port}"))}  # fmt: skip


def tensor(module, name, datatype, array):
    t = module.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


@pytest.mark.parametrize("door", ["grpc", "http"])
def test_health_metadata_and_inference_equal_embedder_v1(server, door):
    module, client = clients(server)[door]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny_text") and client.get_server_metadata()
    images = [png((10, 20, 30)), png((200, 90, 40))]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    texts = client.infer("tiny_text", [tensor(module, "text", "BYTES", np.array(TEXTS, object))])
    by_bytes = client.infer(
        "tiny_image", [tensor(module, "image", "BYTES", np.array(images, object))]
    )
    by_pixels = client.infer("tiny_image", [tensor(module, "pixels", "UINT8", pixels)])
    with EmbedderClient(server.target) as reference:
        np.testing.assert_allclose(texts.as_numpy("embedding"),
                                   reference.embed_texts("tiny_text", [t.decode() for t in TEXTS]),
                                   atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(by_bytes.as_numpy("embedding"),
                                   reference.embed_images("tiny_image", images), atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(by_pixels.as_numpy("embedding"),
                                   reference.embed_images("tiny_image", list(pixels)), atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("door", ["grpc", "http"])
def test_a_published_model_adds_a_scores_output_per_head(server, door):
    module, client = clients(server)[door]
    meta = client.get_model_metadata("tiny_colours")
    if door == "grpc":  # Triton's messages have no metadata parameters: read them with ours
        outputs = {o.name: o for o in meta.outputs}
        ours = _our_metadata(server.target, "tiny_colours")
        classes = json.loads(ours.parameters["colour.classes"].string_param)
        assert json.loads(ours.outputs[1].parameters["classes"].string_param) == classes
    else:
        outputs = {o["name"]: o for o in meta["outputs"]}
        classes = json.loads(meta["parameters"]["colour.classes"])
    assert list(outputs) == ["embedding", "colour", "colour_svm"] and len(classes) == 3
    images = [png((200, 30, 30)), png((30, 30, 200))]
    result = client.infer(
        "tiny_colours", [tensor(module, "image", "BYTES", np.array(images, object))]
    )
    scores = result.as_numpy("colour")
    assert scores.shape == (2, 3) and result.as_numpy("embedding").shape == (2, 24)
    with EmbedderClient(server.target) as reference:
        (head,) = reference.classify("tiny_colours", [pb.Item(image=b) for b in images],
                                     heads=["colour"], top_k=3)  # fmt: skip
    for row, top in zip(scores, head.items, strict=True):
        expected = dict(zip(top.labels, top.scores, strict=True))
        np.testing.assert_allclose(row, [expected[c] for c in classes], atol=1e-5)
    only = client.infer("tiny_colours", [tensor(module, "image", "BYTES", np.array(images, object))],
                        outputs=[module.InferRequestedOutput("colour_svm")])  # fmt: skip
    assert only.as_numpy("colour_svm").shape == (2, 3) and only.as_numpy("embedding") is None


def _our_metadata(target: str, model: str):
    import grpc

    from protos.inference.v2 import messages as v2

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                   request_serializer=v2.ModelMetadataRequest.SerializeToString,
                                   response_deserializer=v2.ModelMetadataResponse.FromString)  # fmt: skip
        return call(v2.ModelMetadataRequest(name=model), timeout=10)


@pytest.mark.parametrize("door", ["grpc", "http"])
def test_errors_map_to_the_protocols_status_codes(server, door):
    module, client = clients(server)[door]
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nope", [tensor(module, "text", "BYTES", np.array([b"x"], object))])
    bad = np.array([png((1, 2, 3)), b"junk"], object)
    with pytest.raises(InferenceServerException) as undecodable:
        client.infer("tiny_image", [tensor(module, "image", "BYTES", bad)])
    with pytest.raises(InferenceServerException) as wrong_input:
        client.infer("tiny_text", [tensor(module, "words", "BYTES", np.array([b"x"], object))])
    codes = [e.value.status() for e in (missing, undecodable, wrong_input)]
    expected = (["StatusCode.NOT_FOUND"] + ["StatusCode.INVALID_ARGUMENT"] * 2 if door == "grpc"
                else ["404", "400", "400"])  # fmt: skip
    assert [str(c) for c in codes] == expected
    assert "item 1: cannot decode" in undecodable.value.message()
    assert "takes one input of ['text']" in wrong_input.value.message()


def test_readiness_goes_503_first_when_draining(repo):
    server = ServerThread(server_config(repo, http_address="127.0.0.1:0", drain_seconds=1))
    server.start()
    url = f"http://127.0.0.1:{server.server.http_port}/v2/health/ready"
    assert urllib.request.urlopen(url).status == 200
    stopping = threading.Thread(target=server.stop, kwargs={"grace": None})
    stopping.start()
    time.sleep(0.3)
    with pytest.raises(urllib.error.HTTPError) as draining:
        urllib.request.urlopen(url)
    assert draining.value.code == 503
    assert not tgrpc.InferenceServerClient(f"127.0.0.1:{server.server.port}").is_server_ready()
    stopping.join(10)


def test_callers_of_every_door_share_batches_and_metrics_say_which(repo):
    """One text from each door, 0.5 s of batching delay: they ride in one batch of three."""
    batching = BatchingConfig(max_batch_size=8, max_queue_delay_ms=500)
    with running_server(repo, http_address="127.0.0.1:0", batching=batching) as server:
        http = f"127.0.0.1:{server.server.http_port}"
        calls = [
            lambda: EmbedderClient(server.target).embed_texts("tiny_text", ["from grpc"]),
            lambda: openai.OpenAI(base_url=f"http://{http}/v1", api_key="x").embeddings.create(
                model="tiny_text", input="from openai"),
            lambda: thttp.InferenceServerClient(http).infer(
                "tiny_text", [tensor(thttp, "text", "BYTES", np.array([b"from v2"], object))]),
        ]  # fmt: skip
        threads = [threading.Thread(target=call) for call in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        registry = server.server.metrics.registry
        value = registry.get_sample_value
        assert value("embedder_batch_items_count", {"model": "tiny_text/1"}) == 1
        assert value("embedder_batch_items_sum", {"model": "tiny_text/1"}) == 3
        for protocol, method in (("embedder.v1", "GetModel"), ("openai", "/v1/embeddings"),
                                 ("kserve-v2", "/v2/models/{name}/infer")):  # fmt: skip
            assert value("embedder_requests_total", {"protocol": protocol, "method": method}) >= 1


def test_a_full_queue_is_refused_on_every_door(repo):
    batching = BatchingConfig(max_batch_size=4, max_queue_delay_ms=1000, max_queue_size=4)
    with running_server(repo, http_address="127.0.0.1:0", batching=batching) as server:
        http = f"127.0.0.1:{server.server.http_port}"
        waiting = threading.Thread(target=lambda: EmbedderClient(server.target).embed(
            embed_request("tiny_image", [image_item(png((5, 5, 5)))] * 3)))  # fmt: skip
        waiting.start()  # three items wait up to 1 s for company in the queue of four
        time.sleep(0.3)
        two = np.array([png((1, 1, 1)), png((2, 2, 2))], object)
        refusals = []
        for module, target in ((tgrpc, server.target), (thttp, http)):
            with pytest.raises(InferenceServerException) as full:
                module.InferenceServerClient(target).infer(
                    "tiny_image", [tensor(module, "image", "BYTES", two)]
                )
            refusals.append(str(full.value.status()))
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(
                base_url=f"http://{http}/v1", api_key="x", max_retries=0
            ).embeddings.create(model="tiny_image", input=["data:image/png;base64,AAAA"] * 2)
        waiting.join(10)
    assert refusals == ["StatusCode.RESOURCE_EXHAUSTED", "429"]


def test_typed_contents_and_plain_json_give_the_same_answers(server):
    """The forms other clients use: typed contents over gRPC, JSON `data` over REST."""
    import grpc

    from protos.inference.v2 import messages as v2

    with EmbedderClient(server.target) as reference:
        expected = reference.embed_texts("tiny_text", [t.decode() for t in TEXTS])
    tensor = v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend(TEXTS)
    with grpc.insecure_channel(server.target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=v2.ModelInferRequest.SerializeToString,
                                    response_deserializer=v2.ModelInferResponse.FromString)  # fmt: skip
        answer = infer(v2.ModelInferRequest(model_name="tiny_text", inputs=[tensor]), timeout=10)
    typed = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(
        list(answer.outputs[0].shape)
    )
    np.testing.assert_allclose(typed, expected, atol=1e-5)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                        "data": [t.decode() for t in TEXTS]}]}  # fmt: skip
    url = f"http://127.0.0.1:{server.server.http_port}/v2/models/tiny_text/infer"
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    answer = json.loads(urllib.request.urlopen(request).read())
    (output,) = answer["outputs"]
    assert output["name"] == "embedding" and output["shape"] == [2, 32]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 32)), expected, atol=1e-5)
