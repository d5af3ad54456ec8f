"""The server's cache option: hits skip compute, and batch export and server share the cache."""

import io

import numpy as np
from PIL import Image
from server_helpers import running_server

from embedder.client import EmbedderClient, embed_request
from embedder.core.sources import image_folder
from embedder.features import FeaturesConfig, export_features
from protos.embedder.v1 import embedder_pb2 as pb


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_second_request_is_served_from_cache(tiny_repo, tmp_path):
    items = [pb.Item(image=_png(i)) for i in range(3)]
    with (
        running_server(tiny_repo, cache=tmp_path / "cache") as server,
        EmbedderClient(server.target) as c,
    ):
        first = c.embed(embed_request("tiny_image", items))
        second = c.embed(embed_request("tiny_image", items[:2] + [pb.Item(image=_png(9))]))
    assert first.cache_hits == [False, False, False]
    assert second.cache_hits == [True, True, False]
    np.testing.assert_array_equal(second.embeddings[:2], first.embeddings[:2])
    assert second.timing.batch_items == 1  # only the new image was computed


def test_batch_export_fills_the_cache_the_server_reads(tiny_repo, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    cache = tmp_path / "cache"
    export_features(
        image_folder(folder),
        FeaturesConfig(repo=tiny_repo, model="tiny_image", cache=cache, progress=False),
    )
    with running_server(tiny_repo, cache=cache) as server, EmbedderClient(server.target) as c:
        result = c.embed(
            embed_request(
                "tiny_image", [pb.Item(image=_png(i)) for i in range(3)] + [pb.Item(image=_png(7))]
            )
        )
    assert result.cache_hits == [True, True, True, False]


def test_server_writes_what_it_computed_on_shutdown(tiny_repo, tmp_path):
    cache = tmp_path / "cache"
    with running_server(tiny_repo, cache=cache) as server, EmbedderClient(server.target) as c:
        c.embed(embed_request("tiny_image", [pb.Item(image=_png(5))]))
    with running_server(tiny_repo, cache=cache) as server, EmbedderClient(server.target) as c:
        assert c.embed(embed_request("tiny_image", [pb.Item(image=_png(5))])).cache_hits == [True]


def test_errors_name_the_request_index_when_earlier_items_hit_the_cache(tiny_repo, tmp_path):
    import grpc
    import pytest

    with (
        running_server(tiny_repo, cache=tmp_path / "cache") as server,
        EmbedderClient(server.target) as c,
    ):
        c.embed(embed_request("tiny_image", [pb.Item(image=_png(0))]))
        items = [pb.Item(image=_png(0)), pb.Item(image=_png(1)), pb.Item(image=b"corrupt")]
        with pytest.raises(grpc.RpcError) as err:
            c.embed(embed_request("tiny_image", items))
    assert err.value.details().startswith("item 2: cannot decode image")


def test_a_wrong_input_is_refused_even_when_its_bytes_are_cached(tiny_repo, tmp_path):
    import grpc
    import pytest

    with (
        running_server(tiny_repo, cache=tmp_path / "cache") as server,
        EmbedderClient(server.target) as c,
    ):
        c.embed(embed_request("tiny_text", [pb.Item(text="the cat sat")]))
        # Image bytes equal to a cached text's UTF-8 bytes have that text's cache key.
        with pytest.raises(grpc.RpcError) as err:
            c.embed(embed_request("tiny_text", [pb.Item(image=b"the cat sat")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "item 0: image sent to text model 'tiny_text'; send text"
