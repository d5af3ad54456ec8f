"""The engine on plain Python items, with no transport: what every door is built on."""

import asyncio
import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from embedder.core.config import SessionConfig
from embedder.core.errors import InputError, NotReadyError
from embedder.core.inputs import Preprocessor
from embedder.core.manifest import Manifest
from embedder.engine.config import EngineConfig
from embedder.engine.engine import EmbedOptions, Engine


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, "PNG")
    return buf.getvalue()


def run(engine: Engine, work):
    async def main():
        engine.start()
        try:
            return await work()
        finally:
            await engine.close()

    return asyncio.run(main())


@pytest.fixture
def engine(tiny_repo):
    e = Engine(EngineConfig(repository=tiny_repo, session=SessionConfig(provider="cpu")))
    e.load()
    return e


def reference(tiny_repo, name: str, feeds) -> np.ndarray:
    path = str(tiny_repo / name / "1" / "model.onnx")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["features"], feeds)[
        0
    ]


def test_images_bytes_and_pixels_and_texts_embed_as_the_onnx_session(engine, tiny_repo):
    folder = tiny_repo / "tiny_image" / "1"
    pre = Preprocessor(Manifest.read(folder), folder)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    images = [png((10, 20, 30)), pixels, png((200, 100, 0))]
    texts = ["the cat sat", "stock market fell"]

    async def work():
        image_model, text_model = engine.model("tiny_image"), engine.model("tiny_text")
        got_images = await engine.embed(image_model, images)
        got_texts = await engine.embed(text_model, texts, EmbedOptions(normalize=True))
        return got_images, got_texts

    got_images, got_texts = run(engine, work)
    arrays = [pre.image(0, pre_item) for pre_item in _raw(images)]
    np.testing.assert_allclose(got_images.vectors, reference(tiny_repo, "tiny_image",
                               {"pixels": np.stack(arrays)}), atol=1e-5)  # fmt: skip
    assert got_images.vectors.dtype == np.dtype("<f4") and got_images.cache_hits == [False] * 3
    norms = np.linalg.norm(got_texts.vectors, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def _raw(items):
    from embedder.engine.engine import raw_item

    return [raw_item(i, item) for i, item in enumerate(items)]


def test_a_bad_item_raises_with_its_index_and_field(engine):
    async def work():
        with pytest.raises(InputError) as bad_image:
            await engine.embed(engine.model("tiny_image"), [png((1, 2, 3)), b"junk"])
        with pytest.raises(InputError) as bad_text:
            await engine.embed(engine.model("tiny_text"), ["fine", "   "])
        with pytest.raises(InputError) as unknown:
            await engine.embed(engine.model("tiny_text"), ["fine", 3.5])
        return bad_image.value, bad_text.value, unknown.value

    image, text, unknown = run(engine, work)
    assert (image.index, image.field) == (1, "image") and "cannot decode" in image.reason
    assert (text.index, text.field, text.reason) == (1, "text", "empty text")
    assert str(text) == "item 1: empty text"
    assert unknown.index == 1 and "no input" in unknown.reason


def test_refusing_new_work(engine):
    engine.refuse_new_work()
    with pytest.raises(NotReadyError, match="shutting down"):
        engine.model("tiny_text")
