"""Where batch inputs come from: folder listing order, labels, filters, errors."""

import pytest

from embedder.core.sources import SourceError, image_folder


def test_image_folder_lists_images_sorted_with_folder_labels(tmp_path):
    for name in ("dog/b.JPG", "dog/a.png", "cat/x.jpeg", "cat/deep/y.webp", "cat/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = list(image_folder(tmp_path, labels_from_folders=True))
    assert [i.path.relative_to(tmp_path).as_posix() for i in items] == [
        "cat/deep/y.webp", "cat/x.jpeg", "dog/a.png", "dog/b.JPG",
    ]  # fmt: skip
    assert [i.label for i in items] == ["cat", "cat", "dog", "dog"]
    assert all(i.source == str(i.path) for i in items)


def test_image_at_the_top_cannot_take_a_folder_label(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "loose.jpg").write_bytes(b"x")
    assert [i.label for i in image_folder(tmp_path)] == [None, None]
    with pytest.raises(SourceError, match="loose.jpg is not inside a class sub-folder"):
        list(image_folder(tmp_path, labels_from_folders=True))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="is not a folder of images"):
        list(image_folder(tmp_path / "nope"))


def test_sources_are_written_as_the_folder_was_given(tmp_path, monkeypatch):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert [i.source for i in image_folder(".")] == ["cat/a.jpg"]
    assert [i.source for i in image_folder("cat/")] == ["cat/a.jpg"]


def test_text_tables_read_a_byte_order_mark_and_refuse_a_missing_column(tmp_path):
    from embedder.core.sources import text_table

    csv = tmp_path / "excel.csv"
    csv.write_bytes("\ufefftext,label\nthe cat,pets\n".encode())  # Excel's "CSV UTF-8"
    assert [(i.text, i.label) for i in text_table(csv, "text", "label")] == [("the cat", "pets")]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"body": "the cat", "topic": "pets"}\n')
    with pytest.raises(SourceError, match="no column 'text'; columns: body, topic"):
        list(text_table(jsonl, "text"))
    with pytest.raises(SourceError, match="no column 'topik'"):
        list(text_table(jsonl, "body", "topik"))


def test_path_lists_split_on_newlines_only(tmp_path):
    from embedder.core.sources import path_list

    listing = tmp_path / "list.txt"
    listing.write_text("a\u2028b.jpg\r\nc.jpg\n\n")
    assert [i.path.name for i in path_list(listing)] == ["a\u2028b.jpg", "c.jpg"]
