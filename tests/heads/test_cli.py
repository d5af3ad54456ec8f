"""embedder-heads on real cache folders (written with the cache's own writer)."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from embedder.cache import CacheIdentity, EmbeddingCache
from heads.cli import main


def _dataset(root, model="m", noise=0.0, with_files=False):
    X, y = load_digits(return_X_y=True)
    X, y = X[:400].astype(np.float32), y[:400].astype(str)
    X = X + np.random.default_rng(1).standard_normal(X.shape).astype(np.float32) * noise
    cache = EmbeddingCache(root, CacheIdentity(model, "1", 64, model * 64, "p" * 64))
    sources = []
    for i in range(len(y)):
        path = root / "files" / f"{i}.png"
        if with_files:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((X[i].reshape(8, 8) * 15).clip(0, 255).astype(np.uint8)).save(path)
        sources.append(str(path))
    cache.append([f"key{i}" for i in range(len(y))], X, list(y), sources)
    return cache.folder


def test_train_predict_and_backbone_check(tmp_path, capsys):
    data = _dataset(tmp_path / "a")
    assert (
        main(["train", "--features", str(data), "--out", str(tmp_path / "head"), "--folds", "3"])
        == 0
    )
    assert "CV accuracy" in capsys.readouterr().out
    assert main(["predict", "--head", str(tmp_path / "head"), "--features", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 400 and lines[0].split("\t")[1] == "0"
    assert all(line.split("\t")[-1] in ("known", "unknown") for line in lines)  # its OOD scorer
    other = _dataset(tmp_path / "b", model="x")
    assert main(["predict", "--head", str(tmp_path / "head"), "--features", str(other)]) == 2
    assert "embed the data with the head's backbone" in capsys.readouterr().err


def test_evaluate_writes_report_and_plot(tmp_path, capsys):
    data = _dataset(tmp_path / "a")
    out = tmp_path / "eval"
    assert (
        main(
            ["evaluate", "--features", str(data), "--kfold", "3", "--folds", "3", "--out", str(out)]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "3-fold" and report["accuracy"] > 0.9
    assert (out / "confusion.png").stat().st_size > 5000


def test_curve_with_pixel_baseline(tmp_path, capsys):
    data = _dataset(tmp_path / "a", with_files=True)
    out = tmp_path / "curve"
    assert (
        main(["curve", "--features", str(data), "--pixels", "8", "--draws", "2", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    curve = json.loads((out / "curve.json").read_text())
    assert "| k per class |" in text and curve["points"][0]["k"] == 1
    expected = "NEGATIVE TRANSFER" if curve["negative_at"] else "positive transfer"
    assert expected in text and curve["verdict"] in text  # the printed verdict is the saved one


def test_compare_ranks_two_feature_sets(tmp_path, capsys):
    clean = _dataset(tmp_path / "a", model="clean")
    noisy = _dataset(tmp_path / "b", model="noisy", noise=30.0)
    assert main(["compare", "--features", str(noisy), str(clean), "--folds", "3"]) == 0
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| 1") or line.startswith("| 2")
    ]
    assert "clean" in rows[0] and "noisy" in rows[1]


def test_errors_are_reported(tmp_path, capsys):
    cache = EmbeddingCache(tmp_path, CacheIdentity("m", "1", 4, "a" * 64, "b" * 64))
    cache.append(["k1", "k2"], np.ones((2, 4), np.float32), [None, None], ["s1", "s2"])
    assert main(["train", "--features", str(cache.folder), "--out", str(tmp_path / "h")]) == 2
    assert "no labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train"])


def test_curve_with_tfidf_baseline(tmp_path, capsys):
    from embedder.cache import content_key

    rng = np.random.default_rng(0)
    words = {"sport": "goal match team score", "money": "bank market shares rates"}
    texts, labels = [], []
    for label, vocab in words.items():
        for i in range(12):
            texts.append(" ".join(rng.choice(vocab.split(), 5)) + f" item{i}{label}")
            labels.append(label)
    X = np.array([[1.0, 0.0] if y == "sport" else [0.0, 1.0] for y in labels], np.float32)
    X += rng.standard_normal(X.shape).astype(np.float32) * 0.1
    cache = EmbeddingCache(tmp_path, CacheIdentity("enc", "1", 2, "e" * 64, "p" * 64))
    cache.append([content_key(t) for t in texts], X, labels, [f"t.csv:{i}" for i in range(24)])
    table = tmp_path / "t.csv"
    table.write_text("text\n" + "\n".join(texts) + "\n")
    out = tmp_path / "curve"
    argv = [
        "curve",
        "--features",
        str(cache.folder),
        "--texts",
        str(table),
        "--draws",
        "2",
        "--folds",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "TF-IDF" in capsys.readouterr().out


def test_bad_names_and_folds_refused(tmp_path, capsys):
    data = _dataset(tmp_path / "a")
    assert (
        main(["train", "--features", str(data), "--out", str(tmp_path / "h"), "--folds", "3"]) == 0
    )
    capsys.readouterr()
    argv = [
        "publish",
        "--backbone",
        str(tmp_path),
        "--head",
        f"x={tmp_path / 'h'}",
        "--repo",
        str(tmp_path),
        "--name",
        "..",
        "--overwrite",
    ]
    assert main(argv) == 2
    assert "name '..'" in capsys.readouterr().err and (tmp_path / "h").exists()
    with pytest.raises(SystemExit):
        main(["train", "--features", str(data), "--out", str(tmp_path / "h2"), "--folds", "1"])


def test_train_on_a_missing_path_says_what_to_pass(capsys):
    from heads.cli import main

    assert main(["train", "--features", "/missing", "--out", "/tmp/unused-head"]) != 0
    err = capsys.readouterr().err
    assert "no features at /missing" in err and "runs/<name>.parquet" in err


def test_errors_name_the_flag_and_the_way_out(tmp_path, capsys):
    data = _dataset(tmp_path / "a")
    with pytest.raises(SystemExit):
        main(["evaluate", "--features", str(data), "--kfold", "1"])
    assert "folds must be an integer >= 2" in capsys.readouterr().err
    assert main(["predict", "--head", str(tmp_path / "missing"), "--features", str(data)]) == 2
    assert "no head at" in capsys.readouterr().err
    assert main(["train", "--features", str(tmp_path / "a"), "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert "holds 1 cached datasets, not one" in err and str(data) in err


def test_reports_as_json(tmp_path, capsys):
    data = _dataset(tmp_path / "a")
    head = tmp_path / "head"
    argv = ["train", "--features", str(data), "--out", str(head), "--folds", "3", "--json"]
    assert main(argv) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["kind"] == "logreg" and trained["ood"]["kind"] == "mahalanobis"
    assert main(["predict", "--head", str(head), "--features", str(data), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 400 and {"source", "label", "ood_score", "unknown"} <= set(rows[0])
    assert main(["compare", "--features", str(data), "--folds", "3", "--json"]) == 0
    (ranked,) = json.loads(capsys.readouterr().out)
    assert ranked["dim"] == 64 and ranked["mean"] > 0.9
