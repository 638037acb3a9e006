"""Corpus readers: every source kind, streaming, and errors that name the file and offset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gptforge.corpus import CorpusError, iter_documents, iter_segments, resolve_files


def test_text_file_directory_and_glob(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.rst").write_text("third")
    (tmp_path / "skip.bin").write_bytes(b"\x00\xff")
    (tmp_path / ".hidden.txt").write_text("hidden")
    assert list(iter_documents(tmp_path / "b.txt")) == ["second"]
    assert list(iter_documents(tmp_path)) == ["first", "second", "third"]
    assert list(iter_documents(str(tmp_path / "**" / "*.rst"))) == ["third"]
    assert list(iter_documents([tmp_path / "b.txt", str(tmp_path / "a.md")])) == ["second", "first"]


def test_large_text_file_is_one_document_in_bounded_pieces(tmp_path: Path) -> None:
    lines = [f"line {i} ünïcödé 🙂\n" for i in range(2000)]
    path = tmp_path / "big.txt"
    path.write_text("".join(lines), encoding="utf-8")
    segments = list(iter_segments(path, chunk_bytes=1000))
    assert len(segments) > 10
    assert "".join(text for text, _ in segments) == "".join(lines)
    assert [end for _, end in segments] == [False] * (len(segments) - 1) + [True]
    assert all(len(text.encode()) <= 1000 for text, _ in segments)
    # Every cut sits before whitespace that follows a non-space: where the tokenizer splits.
    assert all(text[-1].strip() for text, _ in segments[:-1])
    assert all(text[0].isspace() for text, _ in segments[1:])


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert list(iter_documents(tmp_path / "bom.txt")) == ["hello"]


@pytest.mark.parametrize("whole", [1 << 20, 0])
def test_non_utf8_names_file_and_byte_offset(tmp_path: Path, whole: int) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(("ok line\n" * 300).encode() + "café".encode("latin-1") + b"\n")
    with pytest.raises(
        CorpusError,
        match=r"latin1.txt' is not valid UTF-8: byte 0xe9 at byte offset 2403; re-encode",
    ):
        list(iter_documents(path, chunk_bytes=256))


def test_jsonl_field_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "id": 1}\n\n{"text": "b"}\n{"text": null}\n')
    assert list(iter_documents(path)) == ["a", "b"]
    with pytest.raises(
        CorpusError,
        match=r"line 1 \(byte offset 0\) has no field 'body'; its fields are \['id', 'text'\]",
    ):
        list(iter_documents(path, field="body"))
    path.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(CorpusError, match=r"line 2 \(byte offset 14\) is not valid JSON"):
        list(iter_documents(path))
    path.write_text('["a"]\n')
    with pytest.raises(CorpusError, match="is a JSON list, not an object"):
        list(iter_documents(path))
    path.write_text('{"text": 5}\n')
    with pytest.raises(CorpusError, match="field 'text' holds a int"):
        list(iter_documents(path))
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(CorpusError, match="byte 0xff at byte offset 24"):
        list(iter_documents(path))


def test_missing_paths_and_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(
        CorpusError, match=r"'.*nope.txt' does not exist; pass a text file, a directory"
    ):
        list(iter_documents(tmp_path / "nope.txt"))
    with pytest.raises(CorpusError, match="glob '.*\\*.txt' matched no file"):
        list(iter_documents(str(tmp_path / "*.txt")))
    with pytest.raises(
        CorpusError, match="holds no corpus file; gptforge reads files ending in .txt"
    ):
        resolve_files(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="is empty: it holds no non-empty document"):
        list(iter_documents(tmp_path / "empty.txt"))
    with pytest.raises(CorpusError, match="has type int"):
        list(iter_documents(3))  # type: ignore[arg-type]


def test_reading_is_lazy(tmp_path: Path) -> None:
    good = tmp_path / "a.txt"
    good.write_text("fine")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff")
    docs = iter_documents([good, bad])
    assert next(docs) == "fine"  # the bad file is not touched until it is reached
    with pytest.raises(CorpusError, match="b.txt"):
        next(docs)


def test_parquet_arrow_and_saved_dataset(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import datasets
    import pyarrow.parquet as pq

    table = pa.table({"text": ["alpha", None, "beta"], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "t.parquet")
    with (
        pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    datasets.Dataset.from_dict({"body": ["x", "y"]}).save_to_disk(str(tmp_path / "saved"))
    assert list(iter_documents(tmp_path / "t.parquet")) == ["alpha", "beta"]
    assert list(iter_documents(tmp_path / "t.arrow")) == ["alpha", "beta"]
    assert list(iter_documents(tmp_path / "saved", field="body")) == ["x", "y"]
    with pytest.raises(CorpusError, match=r"has no column 'text'; its columns are \['body'\]"):
        list(iter_documents(tmp_path / "saved"))
    with pytest.raises(
        CorpusError, match=r"t.parquet' has no column 'body'; its columns are \['text', 'n'\]"
    ):
        list(iter_documents(tmp_path / "t.parquet", field="body"))
    with pytest.raises(CorpusError, match="field 'n' holds a int"):
        list(iter_documents(tmp_path / "t.parquet", field="n"))
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["v"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(CorpusError, match=r"has splits \['validation'\] but no 'train' split"):
        list(iter_documents(tmp_path / "dd"))


def test_jsonl_roundtrip_of_many_records(tmp_path: Path) -> None:
    docs = [f"document {i} with text é" for i in range(500)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    assert list(iter_documents(path)) == docs
