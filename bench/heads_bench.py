"""Heads on cached embeddings: accuracy and transfer on the bundled datasets, and C-sweep speed.

    python bench/heads_bench.py --repo models --out out/heads

1. BBC News (2225 articles), LogisticRegression on MiniLM's embeddings and, for reference, on
   TF-IDF (word uni- and bigrams, learnt from each training part): the same shuffled stratified
   5 folds for both, C tuned for both the same way inside each training part (coarse then
   fine grid, 5-fold; heads/train.py); accuracy and macro-F1 over the out-of-fold predictions.
2. Faces vs non-faces (lfw_subset, 25x25): MobileNetV2 vs raw pixels, few-shot curve.
3. sklearn digits (8x8, upscaled): MobileNetV2 vs raw pixels, few-shot curve.
4. The full C sweep of LogisticRegression on 50k x 512 float32, 10 classes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.cache import content_key, load_features  # noqa: E402
from embedder.core.sources import SourceItem  # noqa: E402
from embedder.features import FeaturesConfig, export_features  # noqa: E402
from heads import HeadConfig, train_head  # noqa: E402
from heads.crossval import cross_predict, outer_folds  # noqa: E402
from heads.datasets import bbc_news, digits, lfw_faces  # noqa: E402
from heads.fewshot import few_shot_curve, pixel_baseline, plot_curve, tfidf_baseline  # noqa: E402


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
    """MiniLM's embeddings and TF-IDF, each with a LogisticRegression head, on the same shuffled
    stratified folds, C chosen for each the same way inside every training part (train_head)."""
    texts, y = bbc_news()
    config = HeadConfig()
    splits = outer_folds(y, 5, config.seed)
    X = text_features(texts, "minilm_l6", args)
    minilm, minilm_Cs = cross_predict(X, y, splits, config)
    # TF-IDF rows are sparse and already L2-normalised: no centring (as `embedder-heads curve`)
    baseline, tfidf_config = tfidf_baseline(texts), replace(config, scaling="none")
    tfidf, tfidf_Cs = np.empty_like(y), []
    for train, test in splits:
        train_X, test_X = baseline(train, test)  # the vocabulary learnt from train alone
        head = train_head(train_X, y[train], tfidf_config)
        tfidf[test] = head.predict(test_X)
        tfidf_Cs.append(head.C)
    print(
        "| BBC News (2225 articles), LogisticRegression, 5-fold | accuracy | macro-F1 | C per fold |"
    )
    print("|---|---|---|---|")
    for name, predicted, Cs in (("minilm_l6 embeddings", minilm, minilm_Cs),
                                ("TF-IDF, word uni- and bigrams", tfidf, tfidf_Cs)):  # fmt: skip
        accuracy = float((predicted == y).mean())
        macro_f1 = f1_score(y, predicted, average="macro")
        print(f"| {name} | {accuracy:.4f} | {macro_f1:.4f} | "
              f"{', '.join(f'{c:.3g}' for c in Cs)} |")  # fmt: skip


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
