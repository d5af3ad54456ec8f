"""Regressions from the fault campaign: drain, malformed messages, echoed input, id bytes, TLS."""

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import ServerThread, free_port, running_server, self_signed_cert, server_config

from embedder.client import EmbedderClient, embed_request
from embedder.core.errors import EmbedderError
from protos.embedder.v1 import embedder_pb2 as pb

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_drain_answers_health_not_serving_and_refuses_new_work(tiny_repo):
    """The listener used to close at once: health checks got UNAVAILABLE from +3 ms."""
    target = f"127.0.0.1:{free_port()}"
    config = server_config(tiny_repo, address=target, drain_seconds=1.5)
    server = ServerThread(config)
    server.start()
    stopping = threading.Thread(target=server.stop, kwargs={"grace": None})
    started = time.monotonic()
    stopping.start()
    time.sleep(0.3)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
        with EmbedderClient(target) as client, pytest.raises(grpc.RpcError) as refused:
            client.embed(embed_request("tiny_text", [pb.Item(text="the cat")]))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.details()
        time.sleep(0.3)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
    stopping.join(10)
    assert time.monotonic() - started >= 1.5  # the whole drain window


def test_a_malformed_stream_message_is_invalid_argument_counted_not_logged(tiny_server, caplog):
    """A client's garbage is counted in the metrics; a log line per request would let any
    client flood the server's log."""
    value = tiny_server.server.metrics.registry.get_sample_value
    labels = {"protocol": "embedder.v1", "method": "EmbedStream", "code": "INVALID_ARGUMENT"}
    before = value("embedder_errors_total", labels) or 0
    with grpc.insecure_channel(tiny_server.target) as channel:
        call = channel.stream_stream("/embedder.v1.Embedder/EmbedStream")
        with caplog.at_level("WARNING"), pytest.raises(grpc.RpcError) as failed:
            list(call(iter([b"\xff\xff\xff\x0f not a message"]), timeout=10))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed message" in failed.value.details()
    assert [r for r in caplog.records if r.name.startswith("embedder")] == []
    assert value("embedder_errors_total", labels) == before + 1


def test_echoed_input_is_cut_so_the_status_fits(tiny_server):
    """A 16k-character model name turned NOT_FOUND into a client-side RESOURCE_EXHAUSTED."""
    name = "m" * 20_000
    with EmbedderClient(tiny_server.target) as client, pytest.raises(grpc.RpcError) as failed:
        client.embed(embed_request(name, [pb.Item(text="the cat")]))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    details = failed.value.details()
    assert len(details) < 500 and "more characters" in details


def test_the_answer_size_check_counts_id_bytes(tiny_repo):
    """256 ids of 4-byte emoji passed the check, were computed, then failed on send."""
    # 3 kB each in UTF-8, 760 characters: the request fits 200 kB, the answer (ids and 64 x
    # 32 floats) does not; counted in characters, the ids looked like 49 kB.
    ids = ["\U0001f600" * 760 + str(i) for i in range(64)]
    items = [pb.Item(id=i, text="the cat") for i in ids]
    with running_server(tiny_repo, max_message_bytes=200_000) as server:
        with EmbedderClient(server.target) as client, pytest.raises(grpc.RpcError) as failed:
            client.embed(embed_request("tiny_text", items))
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "would be" in failed.value.details()  # refused by the check, before compute


def test_a_key_that_does_not_match_its_certificate_is_named(tiny_repo, tmp_path):
    key, _ = self_signed_cert(tmp_path, "one")
    _, cert = self_signed_cert(tmp_path, "two")
    with pytest.raises(EmbedderError, match="does not match the certificate"):
        with running_server(tiny_repo, tls_cert=cert, tls_key=key):
            pass


def test_a_bad_item_is_named_in_the_status_details(tiny_server):
    """google.rpc.BadRequest field violations: clients need not parse the message."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from embedder.client import image_item, item_errors

    pixels = __import__("numpy").zeros((8, 8, 3), "uint8")  # the tiny model takes 32 x 32
    cases = [
        ("tiny_image", [pb.Item(image=b"junk")], 0, "image", "cannot decode image"),
        ("tiny_text", [pb.Item(text="the cat"), pb.Item(text="  ")], 1, "text", "empty text"),
        ("tiny_image", [pb.Item(image=b"x"), image_item(pixels)], 0, "image", "cannot decode"),
        ("tiny_image", [image_item(pixels)], 0, "tensor", "tensor uint8[8, 8, 3] does not fit"),
    ]
    with EmbedderClient(tiny_server.target) as client:
        for model, items, index, field, reason in cases:
            with pytest.raises(grpc.RpcError) as failed:
                client.embed(embed_request(model, items))
            exc = failed.value
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert exc.details().startswith(f"item {index}: {reason}")  # today's text, kept
            status = rpc_status.from_call(exc)
            bad = error_details_pb2.BadRequest()
            status.details[0].Unpack(bad)
            assert [v.field for v in bad.field_violations] == [f"items[{index}].{field}"]
            ((got_index, got_reason),) = item_errors(exc)
            assert got_index == index and got_reason.startswith(reason)
        with pytest.raises(grpc.RpcError) as failed:  # not an item's fault: no details
            client.embed(embed_request("tiny_text", []))
        assert item_errors(failed.value) == []
