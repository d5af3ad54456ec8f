"""Heads that know what they did not learn: OOD scorers against far sets built from packaged
data, and what the score costs a served Classify.

    python bench/ood_bench.py --repo models --rounds 5

- faces head: MobileNetV2 features of scikit-image's 200 LFW crops (faces against background),
  against 1,000 of scikit-learn's digits and 400 random crops of the packaged sample photos.
- BBC head: MiniLM features of 1,000 BBC News articles (five topics), against 500 docstrings of
  Python's standard library and 500 paragraphs of the licence files in site-packages.

For each scorer (Mahalanobis, k-NN cosine): AUROC, the share of each far set accepted at the
threshold calibrated to accept 95 % of held-out in-distribution items, FPR at 95 % TPR, and how
much of the held-out half the threshold really accepts: each the mean over 10 random halvings
(the held-out column gives their range too). Then Classify on the faces head, published
with and without the score, alternating rounds of 8 single-image clients.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.cache import load_features  # noqa: E402
from embedder.features import FeaturesConfig, export_features, image_folder  # noqa: E402
from heads.ood import OODConfig  # noqa: E402
from heads.ood_report import evaluate_ood  # noqa: E402


def embed_images(folder: Path, model: str, repo: Path, cache: Path, labels: bool):
    config = FeaturesConfig(
        repo=repo, model=model, cache=cache, progress=False, run_name=folder.name
    )
    return load_features(export_features(image_folder(folder, labels), config).run_file)


def embed_texts(texts: list[str], labels, model: str, repo: Path, cache: Path, name: str):
    from embedder.core.sources import SourceItem

    items = [SourceItem(f"{name}:{i}", None if labels is None else str(labels[i]), text=t)
             for i, t in enumerate(texts)]  # fmt: skip
    config = FeaturesConfig(repo=repo, model=model, cache=cache, progress=False, run_name=name)
    return load_features(export_features(items, config).run_file)


def image_sets(work: Path) -> dict[str, Path]:
    from PIL import Image

    from export.samples import sample_photos
    from heads.datasets import digits, lfw_faces

    lfw_faces(work / "faces")
    digits(work / "digits_all")
    (work / "digits").mkdir()
    for path in sorted((work / "digits_all").rglob("*.png"))[:1000]:
        shutil.copy(path, work / "digits" / f"{path.parent.name}_{path.name}")
    (work / "photos").mkdir()
    rng = np.random.default_rng(0)
    photos = list(sample_photos().values())
    for i in range(400):
        photo = photos[i % len(photos)]
        side = int(rng.integers(32, min(photo.shape[:2])))
        top, left = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
        Image.fromarray(photo[top : top + side, left : left + side]).save(
            work / "photos" / f"{i}.png"
        )
    return {"faces": work / "faces", "digits": work / "digits", "photos": work / "photos"}


def docstrings(count: int = 500) -> list[str]:
    found = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
            continue
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        for _, member in inspect.getmembers(module, inspect.isfunction):
            doc = inspect.getdoc(member) or ""
            if len(doc) > 120 and getattr(member, "__module__", "") == name:
                found.append(doc)
    return sorted(set(found))[:count]


def licences(count: int = 500) -> list[str]:
    site = Path(np.__file__).parents[1]
    paragraphs = []
    for path in sorted(site.glob("*.dist-info/*LICEN[CS]E*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            paragraphs += [p.strip() for p in text.split("\n\n") if len(p.strip()) > 120]
    return sorted(set(paragraphs))[:count]


def report_rows(name: str, inside, outside: dict) -> list[str]:
    rows = []
    for kind in ("mahalanobis", "knn"):
        r = evaluate_ood(
            inside.X, inside.y, {k: v.X for k, v in outside.items()}, OODConfig(kind), repeats=10
        )
        for s in r.sets:
            rows.append(f"| {name} | {kind} | {s.name} ({s.items}) | {s.auroc:.4f} | "
                        f"{100 * s.accepted:.1f} % | {100 * s.fpr_at_95_tpr:.1f} % | "
                        f"{100 * r.held_out_accepted:.1f} % ({100 * r.held_out_accepted_range[0]:.0f}"
                        f"-{100 * r.held_out_accepted_range[1]:.0f} %, n={r.held_out_items}) |")  # fmt: skip
    return rows


def classify_rate(
    target: str, model: str, images: list[bytes], clients: int, seconds: float
) -> float:
    from embedder.client import EmbedderClient
    from protos.embedder.v1 import embedder_pb2 as pb

    done, end = [0] * clients, time.perf_counter() + seconds

    def run(i: int) -> None:
        with EmbedderClient(target) as client:
            client.classify(model, [pb.Item(image=images[0])])  # warm
            while time.perf_counter() < end:
                client.classify(model, [pb.Item(image=images[(done[i] + i) % len(images)])])
                done[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def classify_cost(repo: Path, faces, dataset: Path, work: Path, rounds: int, seconds: float) -> str:
    from embedder.serving.launch import ServeProcess
    from heads.ood import fit_ood
    from heads.persist import save_head
    from heads.publish import publish
    from heads.train import train_head

    head = train_head(faces.X, faces.y)
    backbone = {"model": "mobilenet_v2", "version": "1", "digest": dataset.name}
    plain = save_head(head, work / "plain", backbone, faces.X.shape[1])
    scored = save_head(head, work / "scored", backbone, faces.X.shape[1], fit_ood(faces.X, faces.y))
    serving = work / "serving"
    shutil.copytree(repo / "mobilenet_v2", serving / "mobilenet_v2")
    publish(serving / "mobilenet_v2" / "1", {"faces": plain}, serving, "faces_plain")
    publish(serving / "mobilenet_v2" / "1", {"faces": scored}, serving, "faces_ood")
    images = [p.read_bytes() for p in sorted((work / "faces").rglob("*.png"))[:64]]
    rates: dict[str, list[float]] = {"faces_plain": [], "faces_ood": []}
    with ServeProcess(
        ["--repo", serving, "--address", "127.0.0.1:0", "--log-level", "WARNING"]
    ) as server:
        for r in range(rounds):
            order = list(rates) if r % 2 == 0 else list(rates)[::-1]
            for model in order:
                rates[model].append(classify_rate(server.grpc_target, model, images, 8, seconds))
    ratio = statistics.median(
        a / b for a, b in zip(rates["faces_ood"], rates["faces_plain"], strict=True)
    )
    return (f"Classify, 8 single-image clients, {rounds} alternating rounds of {seconds:g} s: "
            f"without the score {statistics.median(rates['faces_plain']):.1f}/s, with it "
            f"{statistics.median(rates['faces_ood']):.1f}/s (median per-round ratio {ratio:.3f})")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--no-classify", action="store_true", help="the scorers' table only")
    args = p.parse_args()
    from heads.datasets import bbc_news

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        sets = image_sets(work)
        faces = embed_images(sets["faces"], "mobilenet_v2", args.repo, cache, labels=True)
        outside = {n: embed_images(sets[n], "mobilenet_v2", args.repo, cache, False)
                   for n in ("digits", "photos")}  # fmt: skip
        texts, labels = bbc_news()
        keep = np.concatenate([np.flatnonzero(labels == c)[:200] for c in np.unique(labels)])
        bbc = embed_texts(
            [texts[i] for i in keep], labels[keep], "minilm_l6", args.repo, cache, "bbc"
        )
        far_texts = {"docstrings": embed_texts(docstrings(), None, "minilm_l6", args.repo, cache, "doc"),
                     "licences": embed_texts(licences(), None, "minilm_l6", args.repo, cache, "lic")}  # fmt: skip
        print("| head | scorer | far set (items) | AUROC | accepted at the threshold | "
              "FPR at 95 % TPR | held-out in-distribution accepted |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        print("\n".join(report_rows("faces (MobileNetV2)", faces, outside)))
        print("\n".join(report_rows("BBC topics (MiniLM)", bbc, far_texts)))
        dataset = Path(str(next(iter((cache / "mobilenet_v2" / "1").iterdir()))))
        if not args.no_classify:
            print("\n" + classify_cost(args.repo, faces, dataset, work, args.rounds, args.seconds))


if __name__ == "__main__":
    main()
