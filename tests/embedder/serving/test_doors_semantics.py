"""The rest of the fault campaign (issue 24): drain within its window, slow clients cut off,
the protocols' own shapes for every answer, and no work on text the model never reads."""

import http.client
import json
import signal
import socket
import time

import grpc
import openai
import pytest
from server_helpers import running_server

from embedder.serving.launch import ServeProcess
from protos.inference.v2 import messages as v2


@pytest.fixture(scope="module")
def server(tiny_repo):
    with running_server(tiny_repo, http_address="127.0.0.1:0", read_timeout_seconds=1) as s:
        yield s


def raw_http(port: int, request: bytes, wait: float = 10) -> bytes:
    """What the server sends back on a socket given `request`, until it closes it."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        s.settimeout(wait)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def request(server, method: str, path: str, body: dict | bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read()


def test_sigterm_ends_the_process_within_the_drain_window(tiny_repo):
    """Defect 5: with requests in flight the port closed at the window's end, but aiohttp
    waited 30 s more for them; a Kubernetes grace period would have killed it mid-answer."""
    serve = ServeProcess(["--repo", tiny_repo, "--address", "127.0.0.1:0", "--http-address",
                          "127.0.0.1:0", "--drain-seconds", "2"])  # fmt: skip
    port = int(serve.http_target.rpartition(":")[2])
    in_flight = []
    for _ in range(8):  # each handler waits for a body that never comes
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")  # fmt: skip
        in_flight.append(s)
    time.sleep(0.5)
    started = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    try:
        assert serve.proc.wait(timeout=20) == 0
    finally:
        serve.proc.kill()
        for s in in_flight:
            s.close()
    assert time.monotonic() - started < 2 + 2.5  # the window, and the exit itself


def test_headers_that_trickle_or_never_come_are_cut_off(server):
    """Defect 8: 300 connections with half-sent headers were still open after 20 s."""
    port = server.server.http_port
    started = time.monotonic()
    assert raw_http(port, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n") == b""
    assert raw_http(port, b"") == b""
    assert time.monotonic() - started < 9  # closed by the server (1 s each), not by our wait
    slow_body = raw_http(port, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
                               b"Content-Type: application/json\r\n\r\n{")  # fmt: skip
    assert slow_body.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in slow_body


def test_a_kept_alive_connection_outlives_the_header_timeout(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().read() == b'{"live": true}'
        time.sleep(1.5)  # idle longer than the header timeout: idle is not slow headers


def test_openai_routes_and_errors_have_openais_shape(server):
    """Defect 7: GET /v1/models/{id} was missing (the SDK's models.retrieve failed), an unknown
    route answered model_not_found and a 405 was a server_error."""
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server.http_port}/v1", api_key="x")
    assert sdk.models.retrieve("tiny_text").id == "tiny_text"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("nope")
    assert missing.value.body["code"] == "model_not_found"
    status, body = request(server, "POST", "/v1/nope", {})
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"
    status, body = request(server, "GET", "/v1/embeddings")
    assert status == 405 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_request_aiohttp_cannot_parse_is_answered_in_json(server):
    """Defect 7: aiohttp's own errors were plain text."""
    answer = raw_http(server.server.http_port, b"GET /v2 HTTP/1.1\r\nHost x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400" and b"application/json" in head
    assert "malformed HTTP request" in json.loads(body)["error"]


TEXT = {"name": "text", "datatype": "BYTES", "shape": [1]}


@pytest.mark.parametrize("header, binary, message", [
    ({"inputs": [{**TEXT, "data": ["a cat"]}], "parameters": {"binary_data_output": "false"}},
     b"", "binary_data_output must be true or false"),
    ({"inputs": [{**TEXT, "parameters": {"binary_data_size": 9}}]},
     b"\x05\0\0\0a cattrailing", "binary_data_size is 9, but 17 bytes follow"),
    ({"inputs": [{**TEXT, "data": ["a cat"], "parameters": {"binary_data_size": 9}}]},
     b"\x05\0\0\0a cat", "both data and binary_data_size"),
    ({"inputs": [{**TEXT, "data": ["a cat"]}]}, b"junk", "4 bytes follow the JSON header"),
], ids=["string-flag", "trailing-bytes", "data-and-binary", "bytes-without-binary-input"])  # fmt: skip
def test_kserve_rest_takes_one_reading_of_a_request(server, header, binary, message):
    """Defect 7: "false" read as true; trailing bytes and double contents were accepted."""
    head = json.dumps(header).encode()
    status, body = request(server, "POST", "/v2/models/tiny_text/infer", head + binary,
                           {"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    assert status == 400 and message in json.loads(body)["error"]


def test_kserve_grpc_refuses_raw_and_typed_contents_together(server):
    tensor = v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"a cat")
    request_ = v2.ModelInferRequest(model_name="tiny_text", inputs=[tensor],
                                    raw_input_contents=[b"\x05\0\0\0a cat"])  # fmt: skip
    with grpc.insecure_channel(server.target) as channel:
        infer = channel.unary_unary(f"/{v2.SERVICE}/ModelInfer",
                                    request_serializer=v2.ModelInferRequest.SerializeToString,
                                    response_deserializer=v2.ModelInferResponse.FromString)  # fmt: skip
        with pytest.raises(grpc.RpcError) as both:
            infer(request_, timeout=10)
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "both as raw_input_contents and as typed contents" in both.value.details()


class CountingTokenizer:
    """The real tokenizer, noting how many characters it was given."""

    def __init__(self, real):
        self.real, self.seen = real, []

    def encode(self, text):
        self.seen.append(len(text))
        return self.real.encode(text)

    def encode_batch(self, texts):
        self.seen.extend(map(len, texts))
        return self.real.encode_batch(texts)


def test_a_long_text_is_cut_before_it_is_tokenised(tiny_repo):
    """Defect 8: a 5 MB text was tokenised whole (2.2 s) to keep its first max_length tokens."""
    from tokenizers import Tokenizer

    from embedder.core.manifest import Manifest
    from embedder.core.preprocess import TextTokenizer

    folder = tiny_repo / "tiny_text" / "1"
    cfg = Manifest.read(folder).preprocess
    tokenizer = TextTokenizer(folder / cfg.tokenizer_file, cfg)
    counting = tokenizer._tok = CountingTokenizer(tokenizer._tok)
    text = "the cat sat on the mat and looked out " * 140_000  # 5.3 MB
    full = Tokenizer.from_file(str(folder / cfg.tokenizer_file))
    full.enable_truncation(max_length=cfg.max_length)
    # The reference: a prefix of 20,000 characters holds far more than max_length tokens and
    # ends between words, so its first tokens are the whole text's (tokenising 5 MB takes s).
    expected = full.encode(text[: 20_000 - 20_000 % len("the cat sat on the mat and looked out ")])
    assert len(expected.ids) == cfg.max_length
    for texts in ([text], [text, "a dog"]):
        (ids, *_) = tokenizer.encode(texts)
        assert ids.tolist() == expected.ids
    assert max(counting.seen) <= tokenizer.max_chars < 10_000
