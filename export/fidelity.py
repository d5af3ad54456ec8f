"""The fidelity gate of a reduced-precision variant: did it change anything that matters?

Measured at export against the fp32 graph, on labelled data that ships in packages:
- the cosine of each embedding to fp32 (mean, min),
- a linear probe (StandardScaler + LogisticRegression, 5-fold, fixed seed) trained on fp32 and
  on variant features: the change of its accuracy in points,
- how many of each item's 10 nearest neighbours (cosine) stay the same.
A variant passes with cosine min >= 0.99, a probe change of at most 0.5 points down (or of
two items of the probe set, when that is more: a smaller change cannot be told from the
classifier's own noise on a few hundred items) and a neighbour overlap of at least 0.9, on
every probe set. Text: 300 BBC News articles (every 7th, 5 classes), cut to 128 tokens.
Images: faces vs non-faces (200) and 300 digits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from embedder.core.vectors import cosine_rows, unit_rows

COSINE_MIN, PROBE_DROP_POINTS, KNN_OVERLAP = 0.99, 0.5, 0.9
PROBE_TOKENS = 128


@dataclass
class ProbeSet:
    """One labelled set ready for a graph, its fp32 embeddings and their probe accuracy."""

    name: str
    feeds: list[dict[str, np.ndarray]]  # batches
    labels: np.ndarray
    fp32: np.ndarray | None = None
    fp32_accuracy: float | None = None


def embed(session, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([session.run(["features"], f)[0] for f in feeds]).astype(np.float64)


def embed_fp32(probes: list[ProbeSet], session) -> None:
    """Fills each probe set's fp32 embeddings and probe accuracy, what every variant is
    measured against."""
    for p in probes:
        p.fp32 = embed(session, p.feeds)
        p.fp32_accuracy = probe_accuracy(p.fp32, p.labels)


def pixel_batches(pixels: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    return [{"pixels": pixels[i : i + batch]} for i in range(0, len(pixels), batch)]


def items_in(feeds: list[dict[str, np.ndarray]]) -> int:
    """How many inputs the batches hold."""
    return sum(len(next(iter(f.values()))) for f in feeds)


def _bbc_news(backbone, first: int, count: int, batch: int):
    """Every 7th BBC News article from `first` (`count` of them), tokenised in batches."""
    from embedder.core.preprocess import TextTokenizer
    from heads.datasets import bbc_news

    texts, labels = bbc_news()
    texts, labels = texts[first::7][:count], labels[first::7][:count]
    length = min(PROBE_TOKENS, backbone.preprocess.max_length)  # the model may take fewer
    cfg = replace(backbone.preprocess, max_length=length, truncation=True)
    tokenizer = TextTokenizer(backbone.extra_files[cfg.tokenizer_file], cfg)
    feeds = [tokenizer(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return feeds, np.asarray(labels)


def probe_sets(backbone, batch: int = 32) -> list[ProbeSet]:
    """The labelled sets of the backbone's modality, preprocessed as the model is served."""
    if backbone.modality == "text":
        return [ProbeSet("bbc_news", *_bbc_news(backbone, 0, 300, batch))]
    return [_images("faces", *_faces(), backbone, batch),
            _images("digits", *_digits(), backbone, batch)]  # fmt: skip


def calibration_feeds(backbone, batch: int = 32) -> list[dict[str, np.ndarray]]:
    """Inputs for quantisation choices, none of them in a probe set or among the samples
    (text: 64 other BBC articles; images: 96 crops of packaged photos)."""
    from .samples import calibration_photos, photo_crops

    if backbone.modality == "text":
        return _bbc_news(backbone, 3, 64, batch)[0]
    return pixel_batches(photo_crops(backbone.preprocess, 96, calibration_photos()), batch)


def _faces() -> tuple[np.ndarray, np.ndarray]:
    import skimage.data

    gray = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    return gray, np.array(["face"] * 100 + ["nonface"] * 100)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images[::6][:300] * (255 / 16)).round().astype(np.uint8)
    return pixels, bunch.target[::6][:300].astype(str)


def _images(name: str, gray: np.ndarray, labels: np.ndarray, backbone, batch: int) -> ProbeSet:
    from embedder.core.preprocess import image_to_pixels

    rgb = np.repeat(gray[..., None], 3, axis=-1)
    pixels = np.stack([image_to_pixels(img, backbone.preprocess) for img in rgb])
    return ProbeSet(name, pixel_batches(pixels, batch), labels)


def probe_accuracy(X: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(model, X, y, cv=folds).mean())


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest rows (cosine) that a and b have in common."""

    def neighbours(x: np.ndarray) -> np.ndarray:
        x = unit_rows(x)
        similarity = x @ x.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(na, nb, strict=True)]))


def gate(probes: list[ProbeSet], variant_session) -> dict:
    """The variant's figures on every probe set (filled by embed_fp32); the worst decide."""
    rows = []
    for p in probes:
        if p.fp32 is None or p.fp32_accuracy is None:
            raise ValueError(f"probe set {p.name} has no fp32 figures; call embed_fp32 first")
        out = embed(variant_session, p.feeds)
        cos = cosine_rows(out, p.fp32)
        base, got = p.fp32_accuracy, probe_accuracy(out, p.labels)
        allowed = max(PROBE_DROP_POINTS, 2 * 100 / len(p.labels))
        rows.append({"probe": p.name, "items": len(p.labels), "cosine_min": float(cos.min()),
                     "cosine_mean": float(cos.mean()), "probe_accuracy_fp32": base,
                     "probe_accuracy": got, "probe_change_points": 100 * (got - base),
                     "probe_allowed_drop_points": allowed,
                     "knn10_overlap": knn_overlap(p.fp32, out)})  # fmt: skip
    worst = {
        "cosine_min": min(r["cosine_min"] for r in rows),
        "probe_change_points": min(r["probe_change_points"] for r in rows),
        "knn10_overlap": min(r["knn10_overlap"] for r in rows),
    }
    return {"passed": all(map(probe_passes, rows)), **worst, "probes": rows}


def probe_passes(row: dict) -> bool:
    """One probe set's verdict. A drop of exactly the allowed items passes: the fold means
    carry float noise (two items of 300 read -0.6666666666666599 points)."""
    drop_ok = row["probe_change_points"] >= -row["probe_allowed_drop_points"] - 1e-9
    return row["cosine_min"] >= COSINE_MIN and row["knn10_overlap"] >= KNN_OVERLAP and drop_ok
