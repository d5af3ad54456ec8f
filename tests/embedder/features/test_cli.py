"""embedder-features says what went wrong: no silent failure, no work on the wrong input."""

import json

from embedder.features.cli import main


def test_a_run_where_every_item_failed_exits_non_zero_with_the_reasons(tiny_repo, tmp_path,
                                                                       capsys):  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(b"not a png at all %d" % i)
    argv = ["export", "--images", str(images), "--model", "tiny_image", "--repo", str(tiny_repo),
            "--cache", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "3 x cannot decode image" in err and "every item failed" in err


def test_texts_for_an_image_model_are_refused_before_any_work(tiny_repo, tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("text\nthe cat\n")
    argv = ["export", "--texts", str(table), "--model", "tiny_image", "--repo", str(tiny_repo),
            "--cache", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "tiny_image is an image model and the source holds texts" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_an_unknown_model_is_answered_with_the_closest_names(tiny_repo, tmp_path, capsys):
    argv = ["export", "--images", str(tmp_path), "--model", "tiny_imag", "--repo",
            str(tiny_repo), "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 2
    assert "it has: tiny_image (closest), tiny_text" in capsys.readouterr().err


def test_json_summary_and_show(tiny_repo, trained, tmp_path, capsys):
    root = trained[0]
    argv = ["export", "--images", str(root / "images"), "--labels-from-folders", "--model",
            "tiny_image", "--repo", str(tiny_repo), "--cache", str(tmp_path / "c"),
            "--no-progress", "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == 36 and summary["failed"] == 0
    assert main(["show", summary["run_file"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"rows": 36, "dim": 24, "labels": ["blue", "green", "red"]}
