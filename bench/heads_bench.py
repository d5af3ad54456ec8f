"""Heads on cached embeddings: accuracy and transfer on the bundled datasets, and C-sweep speed.

    python bench/heads_bench.py --repo models --out out/heads

1. BBC News (2225 articles), MiniLM + LogisticRegression, 5-fold (and TF-IDF for reference).
2. Faces vs non-faces (lfw_subset, 25x25): MobileNetV2 vs raw pixels, few-shot curve.
3. sklearn digits (8x8, upscaled): MobileNetV2 vs raw pixels, few-shot curve.
4. The full C sweep of LogisticRegression on 50k x 512 float32, 10 classes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.cache import content_key, load_features  # noqa: E402
from embedder.features import FeaturesConfig, export_features  # noqa: E402
from embedder.features.sources import SourceItem  # noqa: E402
from heads import HeadConfig, train_head  # noqa: E402
from heads.datasets import bbc_news, digits, lfw_faces  # noqa: E402
from heads.evaluate import evaluate  # noqa: E402
from heads.fewshot import few_shot_curve, pixel_baseline, plot_curve  # noqa: E402


def embed(items: list[SourceItem], keys: list[str], config: FeaturesConfig) -> np.ndarray:
    """Batch-export into the cache, then rows in the order of `keys` (content hashes)."""
    summary = export_features(items, config)
    features = load_features(summary.dataset)
    row = {k: i for i, k in enumerate(features.keys)}
    return features.X[[row[k] for k in keys]]


def image_features(paths, model, args) -> np.ndarray:
    items = [SourceItem(str(p), None, path=p) for p in paths]
    keys = [content_key(p.read_bytes()) for p in paths]
    return embed(
        items,
        keys,
        FeaturesConfig(repo=args.repo, model=model, cache=args.cache, progress=False),
    )


def text_features(texts, model, args) -> np.ndarray:
    items = [SourceItem(f"bbc:{i}", None, text=t) for i, t in enumerate(texts)]
    keys = [content_key(t) for t in texts]
    return embed(
        items,
        keys,
        FeaturesConfig(repo=args.repo, model=model, cache=args.cache, progress=False),
    )


def bbc(args) -> None:
    texts, y = bbc_news()
    X = text_features(texts, "minilm_l6", args)
    report = evaluate(X, y, HeadConfig(), folds=5)
    print(f"BBC News, minilm_l6 + LogisticRegression, 5-fold: accuracy {report.accuracy:.4f}, "
          f"macro-F1 {report.macro_f1:.4f}")  # fmt: skip
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    tfidf = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), LogisticRegression(C=10, max_iter=1000)
    )
    print(
        f"BBC News, TF-IDF + LogisticRegression (C=10), 5-fold: {cross_val_score(tfidf, texts, y, cv=5).mean():.4f}"
    )


def transfer(name: str, loader, args, ks: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths, y, pixels = loader(Path(tmp))
        X = image_features(paths, "mobilenet_v2", args)
    curve = few_shot_curve(X, y, pixel_baseline(pixels), name="mobilenet_v2",
                           baseline_name="raw pixels", ks=ks, draws=args.draws)  # fmt: skip
    print(
        f"\n{name}: few-shot accuracy (%), mean ± std over {args.draws} draws, test n={curve.n_test}\n"
    )
    print(curve.table())
    print(f"\n{curve.verdict()}")
    print(f"plot: {plot_curve(curve, args.out / f'{name}_fewshot.png')}")
    (args.out / f"{name}_fewshot.json").write_text(curve.to_json())


def sweep_speed() -> None:
    from sklearn.datasets import make_classification

    X, y = make_classification(50_000, 512, n_informative=64, n_classes=10, random_state=0)
    head = train_head(X.astype(np.float32), y, HeadConfig())
    print(f"\nC sweep, LogisticRegression, 50k x 512 float32, 10 classes: {head.fit_seconds:.1f} s "
          f"for {head.fits} fits ({1000 * head.fit_seconds / head.fits:.0f} ms per fit, "
          f"{len(head.cv_scores)} values of C x 5 folds + refit), best C {head.C:.3g}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--cache", type=Path, default=Path("cache"))
    p.add_argument("--out", type=Path, default=Path("out/heads"))
    p.add_argument("--draws", type=int, default=10)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bbc(args)
    transfer("faces", lfw_faces, args, ks=[1, 2, 5, 10, 20, 50])
    transfer("digits", digits, args, ks=[1, 2, 5, 10, 20, 50])
    sweep_speed()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
