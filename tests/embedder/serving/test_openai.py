"""The OpenAI-compatible door, driven by the real `openai` SDK against a real server."""

import base64
import io
import threading
import time

import numpy as np
import openai
import pytest
from PIL import Image
from server_helpers import running_server

from embedder.client import EmbedderClient
from embedder.core.inputs import Preprocessor
from embedder.core.manifest import Manifest
from embedder.engine.config import BatchingConfig

TEXTS = ["the cat sat on the mat", "stock market fell", "a cup of coffee"]


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def sdk(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.server.http_port}/v1",
                         api_key=key, max_retries=0)  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_repo):
    with running_server(tiny_repo, http_address="127.0.0.1:0") as s:
        yield s


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embeddings_equal_embedder_v1(server):
    client = sdk(server)
    got = client.embeddings.create(model="tiny_text", input=TEXTS)  # the SDK asks for base64
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == "tiny_text"
    images = [png((10, 20, 30)), png((200, 40, 90))]
    got_images = client.embeddings.create(model="tiny_image", input=[data_url(b) for b in images])
    with EmbedderClient(server.target) as grpc_client:
        texts = grpc_client.embed_texts("tiny_text", TEXTS)
        pixels = grpc_client.embed_images("tiny_image", images)
    assert cosine([d.embedding for d in got.data], texts).min() >= 0.99999
    assert cosine([d.embedding for d in got_images.data], pixels).min() >= 0.99999
    assert got_images.usage.prompt_tokens == 0


def test_float_and_base64_and_dimensions(server):
    client = sdk(server)
    as_float = client.embeddings.create(model="tiny_text", input=TEXTS[0], encoding_format="float")
    raw = client.with_raw_response.embeddings.create(model="tiny_text", input=TEXTS[0],
                                                     encoding_format="base64").http_response.json()  # fmt: skip
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(decoded, as_float.data[0].embedding, rtol=0, atol=0)
    short = client.embeddings.create(model="tiny_text", input=TEXTS[0], dimensions=8)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (8,) and abs(np.linalg.norm(vector) - 1) < 1e-5  # re-normalised
    assert cosine([vector], [as_float.data[0].embedding[:8]])[0] > 0.99999


def test_usage_counts_the_models_tokens(server, tiny_repo):
    folder = tiny_repo / "tiny_text" / "1"
    pre = Preprocessor(Manifest.read(folder), folder)
    got = sdk(server).embeddings.create(model="tiny_text", input=TEXTS)
    assert got.usage.prompt_tokens == sum(len(ids) for ids in pre.texts(TEXTS)) > 0


def test_models_and_errors_in_openais_shape(server):
    client = sdk(server)
    assert [m.id for m in client.models.list()] == ["tiny_image", "tiny_text"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="x")
    assert (
        missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    )
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="tiny_image",
                                 input=[data_url(png((1, 2, 3))), data_url(b"junk")])  # fmt: skip
    assert bad.value.body["param"] == "input[1]" and "item 1: cannot decode" in bad.value.message
    with pytest.raises(openai.BadRequestError, match="data:image"):
        client.embeddings.create(model="tiny_image", input="a text, not an image")
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        client.embeddings.create(model="tiny_text", input=[[1, 2, 3]])


def test_bearer_token_auth(tiny_repo):
    with running_server(tiny_repo, http_address="127.0.0.1:0", auth_token="secret") as server:
        with pytest.raises(openai.AuthenticationError):
            sdk(server, key="wrong").embeddings.create(model="tiny_text", input="x")
        got = sdk(server, key="secret").embeddings.create(model="tiny_text", input="x")
        assert len(got.data[0].embedding) == 32


def test_a_body_over_the_limit_is_413(tiny_repo):
    with running_server(tiny_repo, http_address="127.0.0.1:0", max_message_bytes=4096) as server:
        with pytest.raises(openai.APIStatusError) as big:
            sdk(server).embeddings.create(model="tiny_text", input=["word " * 2000])
    assert big.value.status_code == 413 and "4096 bytes" in big.value.message


def test_a_full_queue_answers_429(tiny_repo):
    batching = BatchingConfig(max_batch_size=4, max_queue_delay_ms=1000, max_queue_size=4)
    with running_server(tiny_repo, http_address="127.0.0.1:0", batching=batching) as server:
        client = sdk(server)
        waiting = threading.Thread(  # 3 items wait up to 1 s for company in the queue of 4
            target=lambda: client.embeddings.create(model="tiny_text", input=TEXTS)
        )
        waiting.start()
        time.sleep(0.3)
        with pytest.raises(openai.RateLimitError) as full:
            client.embeddings.create(model="tiny_text", input=["two", "more"])
        waiting.join(10)
    assert full.value.body["code"] == "rate_limit_exceeded"


def test_a_draining_server_answers_503(tiny_repo):
    from server_helpers import ServerThread, server_config

    server = ServerThread(server_config(tiny_repo, http_address="127.0.0.1:0", drain_seconds=1))
    server.start()
    client = sdk(server)
    assert client.embeddings.create(model="tiny_text", input="x").data
    stopping = threading.Thread(target=server.stop, kwargs={"grace": None})
    stopping.start()
    time.sleep(0.3)
    with pytest.raises(openai.APIStatusError) as draining:
        client.embeddings.create(model="tiny_text", input="x")
    stopping.join(10)
    assert draining.value.status_code == 503 and "shutting down" in draining.value.message


def test_tls_on_the_http_port(tiny_repo, tmp_path):
    import ssl

    import httpx2 as httpx  # the HTTP client the openai SDK is built on
    from server_helpers import self_signed_cert

    key, cert = self_signed_cert(tmp_path)
    with running_server(tiny_repo, http_address="127.0.0.1:0", tls_cert=cert, tls_key=key,
                        auth_token="t") as server:  # fmt: skip
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{server.server.http_port}/v1",
                               api_key="t", max_retries=0,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(cert))))  # fmt: skip
        assert len(client.embeddings.create(model="tiny_text", input="x").data[0].embedding) == 32
        plain = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server.http_port}/v1",
                              api_key="t", max_retries=0)  # fmt: skip
        with pytest.raises(openai.APIConnectionError):
            plain.embeddings.create(model="tiny_text", input="x")
