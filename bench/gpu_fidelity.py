"""fp16 on the GPU against fp32 on the CPU, for the models the service runs in fp16.

    python bench/gpu_fidelity.py save  --repo models --out refs.npz   # here: fp32 on the CPU
    python bench/gpu_fidelity.py check --repo models --refs refs.npz  # there: fp16 on CUDA

`save` keeps the inputs (32 random crops of the sample photos, preprocessed as served:
export.samples.photo_crops; 16 whole BBC articles, truncated to the model's 256 tokens, and 16
short sentences) with their fp32 outputs, so the GPU machine needs neither the fp32 files nor
the data. `check` runs the fp16 file on CUDA at batch 1, 7 and 32, and prints the minimum and
mean cosine to fp32 (embedder.core.vectors.cosine_rows) and whether any output is NaN or
infinite; then the first and second call time for batch sizes not seen before (convolution
algorithm choice).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.config import SessionConfig  # noqa: E402
from embedder.core.inputs import Preprocessor  # noqa: E402
from embedder.core.manifest import Manifest  # noqa: E402
from embedder.core.runtime import open_session  # noqa: E402
from embedder.core.vectors import cosine_rows  # noqa: E402
from export.samples import photo_crops, sample_photos  # noqa: E402

SENTENCES = [
    "A cup of espresso on a wooden table.",
    "The cat sleeps on the sofa all afternoon.",
    "Stock markets fell sharply after the rate rise.",
    "Astronauts prepare for a launch next week.",
]
BATCHES = (1, 7, 32)
NEW_SIZES = (3, 5, 9, 17, 33, 64)


def inputs(name: str, folder: Path) -> list:
    """One model's 32 inputs, ready for its preprocessor's collate."""
    manifest = Manifest.read(folder)
    if manifest.modality == "image":
        return list(photo_crops(manifest.preprocess, 32, list(sample_photos().values())))
    from heads.datasets import bbc_news

    articles = bbc_news()[0][::139][:16]
    return [*articles, *(SENTENCES * 4)]


def opened(repo: Path, name: str, provider: str):
    """(session, preprocessor) of version 1 of `name` on `provider`."""
    folder = repo / name / "1"
    manifest = Manifest.read(folder)
    return open_session(folder, manifest, SessionConfig(provider=provider)), Preprocessor(
        manifest, folder
    )


def save(args) -> None:
    arrays = {}
    for name in args.models:
        session, pre = opened(args.repo, name, "cpu")
        items = inputs(name, session.folder)
        arrays[f"{name}/inputs"] = np.array(items) if isinstance(items[0], str) else np.stack(items)
        batch = pre.texts(items) if isinstance(items[0], str) else items
        arrays[f"{name}/fp32"] = session.features(pre.collate(batch))
    np.savez_compressed(args.out, **arrays)


def check(args) -> None:
    refs = np.load(args.refs)
    results = {}
    for name in args.models:
        session, pre = opened(args.repo, name, "cuda")
        items, fp32 = refs[f"{name}/inputs"], refs[f"{name}/fp32"]
        texts = items.dtype.kind == "U"

        def feeds(n: int, items=items, texts=texts, pre=pre):
            part = [str(t) for t in items[:n]] if texts else list(items[:n])
            return pre.collate(pre.texts(part) if texts else part)

        result = {"providers": session.providers, "precision": session.precision}
        for n in BATCHES:
            out = session.features(feeds(n))
            cos = cosine_rows(out, fp32[:n])
            result[f"batch {n}"] = {"cosine_min": float(cos.min()),
                                    "cosine_mean": float(cos.mean()),
                                    "finite": bool(np.isfinite(out).all())}  # fmt: skip
        first = {}
        for n in NEW_SIZES:
            big = feeds(min(n, len(items)))
            big = {k: np.concatenate([v] * -(-n // len(v)))[:n] for k, v in big.items()}
            calls = []
            for _ in range(2):
                t = time.perf_counter()
                session.features(big)
                calls.append(1000 * (time.perf_counter() - t))
            first[n] = {"first_ms": calls[0], "second_ms": calls[1]}
        result["first_call_ms"] = first
        results[name] = result
        print(name, json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("mode", choices=("save", "check"))
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "minilm_l6"])
    p.add_argument("--out", type=Path, default=Path("refs.npz"))
    p.add_argument("--refs", type=Path, default=Path("refs.npz"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    save(args) if args.mode == "save" else check(args)


if __name__ == "__main__":
    main()
