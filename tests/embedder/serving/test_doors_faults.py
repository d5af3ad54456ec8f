"""Hostile and malformed input on the HTTP and KServe doors: a clear 4xx, never a 500 or a hang
(found by an independent review of the doors)."""

import json
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from server_helpers import ServerThread, running_server, server_config

from protos.inference.v2 import messages as v2


@pytest.fixture(scope="module")
def server(tiny_repo):
    with running_server(tiny_repo, http_address="127.0.0.1:0", auth_token="tok") as s:
        yield s


def post(server, path: str, body: bytes, headers=None, token: str | None = "tok"):
    url = f"http://127.0.0.1:{server.server.http_port}{path}"
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


INFER = "/v2/models/tiny_text/infer"
BAD_V2 = [
    {"inputs": 5},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": 5, "data": ["x"]}]},
    {"inputs": [{"name": ["text"], "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-2, -2], "data": ["x"]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2**32, 2**32, 1, 1], "data": []}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}]},
    {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [300]}]},
    {"inputs": [{"name": "text", "datatype": "FOO", "shape": [1], "data": ["x"]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                 "parameters": {"binary_data_size": "4"}}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
     "outputs": ["embedding"]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
     "parameters": [1]},
]  # fmt: skip


@pytest.mark.parametrize("body", BAD_V2, ids=range(len(BAD_V2)))
def test_malformed_kserve_rest_requests_are_400(server, body):
    status, answer = post(server, INFER, json.dumps(body).encode())
    assert status == 400, answer
    assert "error" in json.loads(answer)


def test_header_length_and_nesting_are_checked(server):
    body = json.dumps({"inputs": []}).encode()
    for length in ("abc", "-5", str(len(body) + 10)):
        status, _ = post(server, INFER, body, {"Inference-Header-Content-Length": length})
        assert status == 400
    deep = b"[" * 200_000
    assert post(server, INFER, deep)[0] == 400
    assert post(server, "/v1/embeddings", deep)[0] == 400


def test_a_lone_surrogate_is_400_on_the_openai_door(server):
    body = json.dumps({"model": "tiny_text", "input": "\ud800"}).encode()
    status, answer = post(server, "/v1/embeddings", body)
    assert status == 400 and "not valid Unicode" in json.loads(answer)["error"]["message"]


def test_more_bytes_elements_than_the_shape_stop_at_once(server):
    """64 MiB of zero-length elements for a shape of one used to take seconds on the loop."""
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 8 << 20}}]}).encode()  # fmt: skip
    started = time.monotonic()
    status, answer = post(server, INFER, header + bytes(8 << 20),
                          {"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert status == 400 and b"more BYTES elements" in answer
    assert time.monotonic() - started < 5


def test_health_probes_need_no_token_and_the_rest_does(server):
    url = f"http://127.0.0.1:{server.server.http_port}"
    assert urllib.request.urlopen(f"{url}/v2/health/live").status == 200
    assert post(server, "/v2/models/tiny_text/infer", b"{}", token=None)[0] == 401


def test_unmatched_paths_share_one_metric_label(server):
    for i in range(3):
        post(server, f"/random/{i}", b"{}")
    value = server.server.metrics.registry.get_sample_value
    assert value("embedder_requests_total", {"protocol": "kserve-v2", "method": "unmatched"}) >= 3
    assert (
        value("embedder_requests_total", {"protocol": "kserve-v2", "method": "/random/0"}) is None
    )


def test_malformed_kserve_grpc_requests_are_invalid_argument(server):
    metadata = (("authorization", "Bearer tok"),)
    pixels = v2.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[-2, -2])
    typed = v2.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[1])
    typed.contents.uint_contents.append(300)
    with grpc.insecure_channel(server.target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=v2.ModelInferRequest.SerializeToString,
                                    response_deserializer=v2.ModelInferResponse.FromString)  # fmt: skip
        for request in (v2.ModelInferRequest(model_name="tiny_image", inputs=[pixels],
                                             raw_input_contents=[b"\0" * 4]),
                        v2.ModelInferRequest(model_name="tiny_image", inputs=[typed])):  # fmt: skip
            with pytest.raises(grpc.RpcError) as bad:
                infer(request, metadata=metadata, timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_kserve_grpc_answer_over_the_limit_is_refused_before_compute(tiny_repo):
    texts = [b"the cat"] * 200  # 200 x 32 floats: over 8 kB
    tensor = v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[200])
    tensor.contents.bytes_contents.extend(texts)
    with running_server(tiny_repo, max_message_bytes=8192) as server:
        with grpc.insecure_channel(server.target) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=v2.ModelInferRequest.SerializeToString,
                                        response_deserializer=v2.ModelInferResponse.FromString)  # fmt: skip
            with pytest.raises(grpc.RpcError) as big:
                infer(v2.ModelInferRequest(model_name="tiny_text", inputs=[tensor]), timeout=10)
        items = server.server.metrics.registry.get_sample_value
        assert items("embedder_items_total", {"model": "tiny_text/1"}) == 0  # nothing computed
    assert (
        big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "would be" in big.value.details()
    )


def test_readiness_waits_for_the_warm_up(tiny_repo, monkeypatch):
    from embedder.engine.model import LoadedModel

    release = threading.Event()
    real = LoadedModel.warm_up

    def slow(self):
        assert release.wait(30)
        real(self)

    monkeypatch.setattr(LoadedModel, "warm_up", slow)
    server = ServerThread(server_config(tiny_repo, http_address="127.0.0.1:0"))
    server.thread.start()
    import asyncio

    starting = asyncio.run_coroutine_threadsafe(server.server.start(), server.loop)
    deadline = time.monotonic() + 30
    while not server.server.http_port and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.server.http_port}/v2/health/ready"
    time.sleep(0.5)  # the models are loaded by now; the warm-up waits
    with pytest.raises(urllib.error.HTTPError) as warming:
        urllib.request.urlopen(url)
    assert warming.value.code == 503
    release.set()
    starting.result(60)
    assert urllib.request.urlopen(url).status == 200
    server.stop()


def test_a_bad_http_address_and_an_unreachable_export_server_are_named(tiny_repo, tmp_path,
                                                                     capsys):  # fmt: skip
    from embedder.features.cli import main as features_main
    from embedder.serving.cli import serve_main

    assert serve_main(["--repo", str(tiny_repo), "--address", "127.0.0.1:0",
                       "--http-address", "localhost"]) == 2  # fmt: skip
    assert "give HOST:PORT" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("text\nthe cat\n")
    args = [
        "export",
        "--texts",
        str(tmp_path / "t.csv"),
        "--model",
        "tiny_text",
        "--engine",
        "server",
        "--server",
        "127.0.0.1:1",
        "--cache",
        str(tmp_path / "c"),
        "--no-progress",
    ]
    assert features_main(args) == 2
    assert "is embedder-serve running there?" in capsys.readouterr().err
