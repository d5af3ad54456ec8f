"""The main job, end to end on the embedded defaults.

1. Export every default backbone (fp32 + fp16 + int8) into a model repository; print a table.
2. Start the gRPC server on that repository, embed the bundled sample photos and sentences
   through it, print their cosine similarities, stop the server.
3. Write a bundled labelled dataset (scikit-image's faces / non-faces) to image files and
   batch-export it with MobileNetV2 into the embedding cache.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path

import numpy as np


def export_defaults(repo: Path) -> None:
    # export/ is the only package that imports torch; the demo orchestrates, it does not serve.
    from export.cli import format_table, result_row
    from export.pipeline import ExportConfig, export_backbone
    from export.registry import list_backbones

    rows = []
    for name in list_backbones(defaults_only=True):
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        config = ExportConfig(name, repo=repo, variants=("fp16", "int8"), overwrite=True)
        rows.append(result_row(export_backbone(config)))
    print(f"\nModel repository: {repo.resolve()}\n")
    print(format_table(rows))


def similarity_table(names: list[str], vectors: np.ndarray) -> str:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    width = max(len(n) for n in names)
    head = " " * width + "  " + "  ".join(n[:7].rjust(7) for n in names)
    rows = [
        n.ljust(width) + "  " + "  ".join(f"{v:7.2f}" for v in row)
        for n, row in zip(names, sim, strict=True)
    ]
    return "\n".join([head, *rows])


def _jpeg(photo: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=92)
    return buf.getvalue()


async def embed_through_server(repo: Path) -> None:
    from embedder.client import AsyncEmbedderClient
    from embedder.config import ServerConfig
    from embedder.server import EmbedderServer
    from export.samples import SAMPLE_SENTENCES, sample_photos

    server = EmbedderServer(ServerConfig(repository=repo, address="127.0.0.1:0"))
    port = await server.start()
    print(f"\nServer up on 127.0.0.1:{port}")
    try:
        async with AsyncEmbedderClient(f"127.0.0.1:{port}") as client:
            for m in await client.list_models():
                where = ", ".join(m.providers)
                print(f"  {m.name}/{m.version}: {m.modality}, {m.dim}-d, {m.precision} on {where}")
            photos = sample_photos()
            photos["chelsea_mirrored"] = photos["chelsea"][:, ::-1]
            jpegs = [_jpeg(p) for p in photos.values()]
            for model in ("mobilenet_v2", "dinov2_small"):
                vectors = await client.embed_images(model, jpegs)
                print(f"\nCosine similarity of the sample photos, {model} via gRPC Embed:")
                print(similarity_table(list(photos), vectors))
            sentences = list(SAMPLE_SENTENCES)
            vectors = await client.embed_texts("minilm_l6", sentences)
            print("\nCosine similarity of the sample sentences, minilm_l6 via gRPC Embed:")
            for i, s in enumerate(sentences):
                print(f"  [{i}] {s}")
            print(similarity_table([f"[{i}]" for i in range(len(sentences))], vectors))
    finally:
        await server.stop(grace=1)
    print("\nServer stopped.")


def write_faces_dataset(folder: Path) -> Path:
    """skimage's lfw_subset (100 faces, 100 non-faces, 25x25 grey) as PNG files per class."""
    import skimage.data
    from PIL import Image

    images = skimage.data.lfw_subset()
    for i, image in enumerate(images):
        label = "face" if i < 100 else "nonface"  # the documented order of lfw_subset
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / label / f"{i:03d}.png")
    return folder


def embed_dataset(repo: Path, cache: Path, data: Path) -> None:
    from embedder.batch_export import BatchExportConfig, export_features
    from embedder.cache import load_features
    from embedder.sources import image_folder

    folder = write_faces_dataset(data / "lfw_subset")
    config = BatchExportConfig(repo=repo, model="mobilenet_v2", cache=cache)
    print(f"\nBatch export of {folder} with mobilenet_v2:")
    summary = export_features(image_folder(folder, labels_from_folders=True), config)
    print(f"  {summary}")
    features = load_features(summary.dataset)
    names, counts = np.unique(features.y, return_counts=True)
    counts = {str(k): int(v) for k, v in zip(names, counts, strict=True)}
    print(f"  load_features -> X {features.X.shape} {features.X.dtype}, labels {counts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedder-demo", description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="embedding cache")
    parser.add_argument("--data", type=Path, default=Path("data"), help="datasets written here")
    args = parser.parse_args(argv)
    export_defaults(args.repo)
    asyncio.run(embed_through_server(args.repo))
    embed_dataset(args.repo, args.cache, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
