"""The main job, end to end on the embedded defaults.

1. Export what it shows into a model repository (fp32; kept when already there, --fresh
   re-exports): MobileNetV2 and MiniLM, and the three image backbones at four cut points each
   for the advisor; print a table. `embedder-export defaults --variants fp16,int8` exports
   every default backbone with its reduced-precision files and their fidelity gates.
2. Write a bundled labelled dataset (scikit-image's faces / non-faces) to image files and
   batch-export it with MobileNetV2 into the embedding cache.
3. Train a logistic-regression head on the cached embeddings: held-out accuracy, a few-shot
   table against raw pixels, plots; publish the head with its backbone.
4. Ask the advisor which backbone, layers and head suit the same data: the three image
   backbones exported at four cut points each, screened by LogME, decided by nested CV;
   the winner is published too.
5. Start the gRPC server on the repository: embed the bundled sample photos and sentences
   (cosine similarities), classify photos with both published heads (Classify), stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import sys
from pathlib import Path

import numpy as np

from embedder.core.vectors import unit_rows

ADVISED_BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "dinov2_small")


def export_models(repo: Path, fresh: bool) -> None:
    """What the demo shows, exported once (export/ is the only package that imports torch: the
    demo orchestrates it, it does not serve)."""
    from embedder.core.manifest import Manifest
    from export.cli import format_table, result_row
    from export.pipeline import ExportConfig, ExportResult, export_backbone

    wanted = [ExportConfig(n, repo=repo) for n in ("mobilenet_v2", "minilm_l6")]
    wanted += [ExportConfig(n, repo=repo, layers=("auto",)) for n in ADVISED_BACKBONES]
    results = []
    for config in wanted:
        folder = repo / (config.name + ("_layers" if config.layers else "")) / "1"
        if (folder / "manifest.json").is_file() and not fresh:
            size = sum(p.stat().st_size for p in folder.iterdir())
            results.append(ExportResult(Manifest.read(folder), folder, size))
            continue
        print(f"exporting {folder.parent.name} ...", file=sys.stderr, flush=True)
        results.append(export_backbone(dataclasses.replace(config, overwrite=True)))
    print(f"\nModel repository: {repo.resolve()}\n")
    print(format_table([result_row(r) for r in results]))


def advise_on_faces(repo: Path, cache: Path, data: Path, out: Path) -> None:
    """`embedder-heads advise` on the faces data with the three image backbones at their
    `--layers auto` cut points, publishing the winner as faces_advised."""
    from heads.cli import main as heads_main

    print("\nWhich backbone, cut points and head for faces vs non-faces (embedder-heads advise):")
    argv = ["advise", "--images", str(data / "lfw_subset"), "--labels-from-folders",
            "--backbones", ",".join(f"{n}_layers" for n in ADVISED_BACKBONES), "--repo",
            str(repo), "--cache", str(cache), "--out", str(out / "advise"), "--publish",
            "faces_advised", "--no-progress"]  # fmt: skip
    if heads_main(argv) != 0:
        raise SystemExit("embedder-demo: the advisor failed (its error is above)")


def similarity_table(names: list[str], vectors: np.ndarray) -> str:
    unit = unit_rows(vectors)
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


async def serve_and_query(repo: Path, faces: list[Path]) -> None:
    from embedder.client import AsyncEmbedderClient
    from embedder.engine.config import EngineConfig
    from embedder.serving.config import ServerConfig
    from embedder.serving.server import EmbedderServer
    from export.samples import SAMPLE_SENTENCES, sample_photos

    server = EmbedderServer(ServerConfig(EngineConfig(repository=repo), address="127.0.0.1:0"))
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
            for model in ("mobilenet_v2", "dinov2_small_layers"):  # the latter: its default cut
                vectors = await client.embed_images(model, jpegs)
                print(f"\nCosine similarity of the sample photos, {model} via gRPC Embed:")
                print(similarity_table(list(photos), vectors))
            sentences = list(SAMPLE_SENTENCES)
            vectors = await client.embed_texts("minilm_l6", sentences)
            print("\nCosine similarity of the sample sentences, minilm_l6 via gRPC Embed:")
            for i, s in enumerate(sentences):
                print(f"  [{i}] {s}")
            print(similarity_table([f"[{i}]" for i in range(len(sentences))], vectors))
            del photos["chelsea_mirrored"]
            await classify_through_server(client, photos, faces)
    finally:
        await server.stop(grace=1)
    print("\nServer stopped.")


def embed_dataset(repo: Path, cache: Path, data: Path):
    from embedder.cache import content_key, load_features
    from embedder.core.sources import image_folder
    from embedder.features import FeaturesConfig, export_features
    from heads.datasets import lfw_faces

    folder = data / "lfw_subset"
    shutil.rmtree(folder, ignore_errors=True)
    paths, labels, pixels = lfw_faces(folder)
    config = FeaturesConfig(repo=repo, model="mobilenet_v2", cache=cache, run_name="lfw_subset")
    print(f"\nBatch export of {folder} (faces vs non-faces) with mobilenet_v2:")
    summary = export_features(image_folder(folder, labels_from_folders=True), config)
    print(f"  {summary}")
    features = load_features(summary.run_file)  # this dataset's rows and labels
    names, counts = np.unique(features.y, return_counts=True)
    counts = {str(k): int(v) for k, v in zip(names, counts, strict=True)}
    print(f"  load_features({summary.run_file}) -> X {features.X.shape}, labels {counts}")
    by_key = {content_key(p.read_bytes()): px for p, px in zip(paths, pixels, strict=True)}
    return summary.dataset, features, np.stack([by_key[k] for k in features.keys])


def train_and_publish(repo: Path, dataset: Path, features, pixels, out: Path) -> list[str]:
    from heads import HeadConfig, train_head
    from heads.evaluate import evaluate, write_report
    from heads.fewshot import few_shot_curve, pixel_baseline, plot_curve
    from heads.ood import OODConfig, fit_ood
    from heads.persist import save_head
    from heads.publish import publish

    config = HeadConfig(kind="logreg")
    report = evaluate(features.X, features.y, config, test_size=0.5)
    json_path, png = write_report(report, out / "faces_report", title="mobilenet_v2")
    print(
        f"\nHead (logistic regression, C by 5-fold CV) on a 50/50 split: accuracy "
        f"{report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f} -> {json_path}, {png}"
    )
    curve = few_shot_curve(
        features.X,
        features.y,
        pixel_baseline(pixels),
        "mobilenet_v2",
        "raw pixels",
        ks=[1, 2, 5, 10, 20],
        draws=5,
        ood=OODConfig(),
    )
    print(f"\nFew-shot accuracy (%), faces vs non-faces, test n={curve.n_test}:\n{curve.table()}")
    print(f"{curve.verdict()}\nplot: {plot_curve(curve, out / 'faces_fewshot.png')}")
    head = train_head(features.X, features.y, config)
    scorer = fit_ood(features.X, features.y)  # which inputs are outside what the head learned
    backbone = {"model": "mobilenet_v2", "version": "1", "digest": dataset.name}
    saved = save_head(head, out / "heads" / "faces", backbone, features.X.shape[1], scorer)
    target = publish(
        repo / "mobilenet_v2" / "1", {"faces": saved}, repo, "mobilenet_v2_faces", overwrite=True
    )
    print(f"Published mobilenet_v2 + faces head -> {target}")
    return [str(c) for c in head.classes]


async def classify_through_server(client, photos: dict[str, np.ndarray], faces: list[Path]) -> None:
    from embedder.client import image_item
    from protos.embedder.v1 import embedder_pb2 as pb

    names = [*photos, *(p.name for p in faces)]
    items = [pb.Item(id=n, image=_jpeg(p)) for n, p in photos.items()] + [
        image_item(p) for p in faces
    ]
    (faces_head,) = await client.classify("mobilenet_v2_faces", items, heads=["faces"])
    (advised,) = await client.classify("faces_advised", items)
    print("\nClassify via gRPC: mobilenet_v2_faces (head 'faces') and faces_advised (the advisor's")
    print("winner). Both learned only 25x25 face crops against background crops; their OOD")
    print(f"scores say so for the sample photos (unknown above the threshold, "
          f"{faces_head.ood_threshold:.4g} and {advised.ood_threshold:.4g}):")  # fmt: skip
    for name, top, other in zip(names, faces_head.items, advised.items, strict=True):
        print(f"  {name:20} {top.labels[0]:8} p={top.scores[0]:.3f} ood={top.ood_score:9.4g} "
              f"{'UNKNOWN' if top.unknown else 'known':8} advised: {other.labels[0]:8} "
              f"{'UNKNOWN' if other.unknown else 'known'}")  # fmt: skip


def build_parser():
    from embedder.core import cli

    parser = cli.parser("embedder-demo", __doc__, "  embedder-demo\n  embedder-demo --fresh\n")
    cli.add_repo(parser)
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="embedding cache")
    parser.add_argument("--data", type=Path, default=Path("data"), help="datasets written here")
    parser.add_argument("--out", type=Path, default=Path("out"), help="reports, plots, heads")
    parser.add_argument("--fresh", action="store_true", help="export the models again")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    export_models(args.repo, args.fresh)
    dataset, features, pixels = embed_dataset(args.repo, args.cache, args.data)
    train_and_publish(args.repo, dataset, features, pixels, args.out)
    advise_on_faces(args.repo, args.cache, args.data, args.out)
    faces = sorted((args.data / "lfw_subset" / "face").glob("*.png"))[:2]
    faces += sorted((args.data / "lfw_subset" / "nonface").glob("*.png"))[:2]
    asyncio.run(serve_and_query(args.repo, faces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
