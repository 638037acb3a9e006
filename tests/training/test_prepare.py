"""``data prepare`` at scale, in small: bounded batches, document boundaries, never destroying
data, cleanup after a kill, shard parts that merge to one run, checksums at resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from gptforge.training import prepare as prepare_module
from gptforge.training.data import DataError, TokenShards, check_resume_data, verify_checksums
from gptforge.training.merge import merge_data
from gptforge.training.prepare import prepare_data
from gptforge.training.shards import replay

from tests.training.helpers import PYTHON, ROOT, child_env


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from gptforge.tokenizer import Tokenizer

    return Tokenizer.from_dir(tokenizer_dir)


def stream(data_dir: Path) -> list[int]:
    """The prepared token stream in its original order (blocks replayed across the splits)."""
    meta = json.loads((data_dir / "meta.json").read_text())
    return np.concatenate(list(replay(data_dir, meta))).tolist()


def expected(tok, docs: list[str]) -> list[int]:
    ids: list[int] = []
    for doc in docs:
        ids += tok.encode(doc, disallowed_special=()) + [tok.eot_token]
    return ids


def test_one_huge_line_in_byte_bounded_batches(tmp_path, tok, tokenizer_dir, texts, monkeypatch):
    line = " ".join(t.replace("\n", " ") for t in texts) * 4  # one line of ~0.3 MB
    (tmp_path / "line.txt").write_text(line)
    sizes: list[int] = []
    real = prepare_module._batches

    def spy(segments, batch_bytes):
        for batch in real(segments, batch_bytes):
            sizes.append(sum(len(text) for text, _ in batch))
            yield batch

    monkeypatch.setattr(prepare_module, "_batches", spy)
    meta = prepare_data(
        str(tmp_path / "line.txt"),
        tokenizer_dir,
        tmp_path / "data",
        chunk_bytes=4096,
        batch_bytes=8192,
        num_proc=2,
        progress=False,
    )
    assert len(sizes) > 30 and max(sizes) <= 8192
    assert meta["documents"] == 1
    assert stream(tmp_path / "data") == expected(tok, [line])  # cuts changed no id, no EOT


def test_one_line_cjk_file_is_cut_at_character_boundaries(tmp_path, tok, tokenizer_dir):
    rng = random.Random(0)
    words = ["日本語", "テキスト", "の", "データ", "準備", "は", "大きい", "ファイル"]
    text = "".join(rng.choice(words) + rng.choice(["", "", "、", "。"]) for _ in range(20000))
    (tmp_path / "ja.txt").write_text(text, encoding="utf-8")
    prepare_data(
        str(tmp_path / "ja.txt"), tokenizer_dir, tmp_path / "d", chunk_bytes=1000, progress=False
    )
    ids = stream(tmp_path / "d")
    assert ids.count(tok.eot_token) == 1
    assert tok.decode(ids[:-1]) == text
    assert ids == expected(tok, [text])  # cut before punctuation: where the tokenizer splits


def test_documents_are_what_the_input_says(tmp_path, tok, tokenizer_dir):
    paras = ["first paragraph\nstill first", "second one", "third\n  indented"]
    (tmp_path / "a.txt").write_text("\n\n".join(paras[:2]) + "\n \n\n" + paras[2] + "\n")
    whole = prepare_data(str(tmp_path / "a.txt"), tokenizer_dir, tmp_path / "w", progress=False)
    assert whole["documents"] == 1
    split = prepare_data(
        str(tmp_path / "a.txt"), tokenizer_dir, tmp_path / "p", paragraphs=True, progress=False
    )
    assert split["documents"] == 3
    assert stream(tmp_path / "p") == expected(tok, paras[:2] + [paras[2] + "\n"])
    records = ["one record", "two\n\nrecords"]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in records))
    prepare_data(str(tmp_path / "r.jsonl"), tokenizer_dir, tmp_path / "j", progress=False)
    assert stream(tmp_path / "j") == expected(tok, records)


def test_failed_prepare_keeps_the_old_directory(tmp_path, tokenizer_dir, texts):
    out = tmp_path / "data"
    old = prepare_data(texts, tokenizer_dir, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 1000 + b"\xff")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        prepare_data(str(bad), tokenizer_dir, out, chunk_bytes=1024, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert verify_checksums(out)["checksum"] == old["checksum"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "data"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a prepared data directory"):
        prepare_data(texts, tokenizer_dir, tmp_path / "notes", progress=False)


KILLED_CHILD = """
import sys, time
from pathlib import Path
from gptforge.training.prepare import prepare_data

def docs():
    for i in range(2000):
        yield f"document {i} " * 50
    Path(sys.argv[3]).write_text("ready")
    time.sleep(120)

prepare_data(docs(), sys.argv[1], sys.argv[2], batch_bytes=1000, num_proc=1, progress=False)
"""


def test_killed_prepare_is_cleaned_up_by_the_next_run(tmp_path, tokenizer_dir, texts, capsys):
    out, ready = tmp_path / "data", tmp_path / "ready"
    prepare_data(texts, tokenizer_dir, out, progress=False)
    before = (out / "meta.json").read_text()
    child = subprocess.Popen(
        [PYTHON, "-c", KILLED_CHILD, str(tokenizer_dir), str(out), str(ready)],
        env=child_env(),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the child never reached the middle of its run"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    leftovers = list(tmp_path.glob(".data.*.tmp"))
    assert len(leftovers) == 1 and any(leftovers[0].glob("train_*.bin"))
    assert (out / "meta.json").read_text() == before  # the old data survived the kill
    prepare_data(texts, tokenizer_dir, out, progress=False)
    assert not list(tmp_path.glob(".data.*"))
    assert "leftover folder(s) of an interrupted `data prepare`" in capsys.readouterr().err


def _mixed_corpus(root: Path, texts: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"f{i}.txt").write_text("\n\n".join(texts[i * 20 : i * 20 + 20]))
    (corpus / "g.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[100:170]))
    pq.write_table(pa.table({"text": texts[170:]}), corpus / "h.parquet", row_group_size=16)
    return corpus


@pytest.mark.parametrize("paragraphs", [False, True])
def test_shard_parts_merge_to_one_prepare(tmp_path, tokenizer_dir, texts, paragraphs):
    corpus = _mixed_corpus(tmp_path, texts)
    opts = dict(block_tokens=64, shard_tokens=5000, paragraphs=paragraphs, progress=False)
    whole = prepare_data(str(corpus), tokenizer_dir, tmp_path / "whole", **opts)
    parts = []
    for index in range(3):
        part = tmp_path / f"part{index}"
        meta = prepare_data(str(corpus), tokenizer_dir, part, shard=f"{index}/3", **opts)
        assert 0 < meta["documents"] < whole["documents"]
        parts.append(part)
    merged = merge_data(list(reversed(parts)), tmp_path / "merged")
    assert merged["documents"] == whole["documents"]
    assert merged["checksum"] == whole["checksum"] and merged["splits"] == whole["splits"]
    for shard in whole["splits"]["train"]["shards"] + whole["splits"]["val"]["shards"]:
        name = shard["file"]
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "merged" / name).read_bytes()
    with pytest.raises(ValueError, match=r"the parts given are \[0, 1\]"):
        merge_data(parts[:2], tmp_path / "incomplete")


def test_streaming_dataset_prepares_like_its_file(tmp_path, tokenizer_dir, texts):
    import datasets

    corpus = _mixed_corpus(tmp_path, texts)
    from_file = prepare_data(
        str(corpus / "h.parquet"), tokenizer_dir, tmp_path / "a", progress=False
    )
    ds = datasets.load_dataset(
        "parquet", data_files=str(corpus / "h.parquet"), split="train", streaming=True
    )
    streamed = prepare_data(ds, tokenizer_dir, tmp_path / "b", progress=False)
    assert streamed["checksum"] == from_file["checksum"]
    with pytest.raises(ValueError, match="--shard needs a corpus of files"):
        prepare_data(ds, tokenizer_dir, tmp_path / "c", shard="0/2", progress=False)
    with pytest.raises(ValueError, match="--shard '1of2' is not INDEX/COUNT"):
        prepare_data(str(corpus), tokenizer_dir, tmp_path / "c", shard="1of2", progress=False)


def test_data_changed_in_place_is_refused_at_resume(tmp_path, tokenizer_dir, texts):
    out = tmp_path / "data"
    meta = prepare_data(texts, tokenizer_dir, out, progress=False)
    check_resume_data(out, meta["checksum"])  # unchanged: fine
    with pytest.raises(DataError, match="changed since this run was checkpointed"):
        check_resume_data(out, "0" * 64)
    shard = out / meta["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[:2] = data[2:4]  # same size, other content
    shard.write_bytes(bytes(data))
    assert TokenShards(out, "train").num_tokens == meta["splits"]["train"]["tokens"]
    with pytest.raises(DataError, match=r"train_000000.bin .* changed after it was prepared"):
        check_resume_data(out, meta["checksum"])


def test_resume_on_data_prepared_again_is_refused(tmp_path, tokenizer_dir, texts):
    from gptforge.training.pretrain import pretrain

    from tests.training.helpers import StopRun, debug_config, stop_at

    data = tmp_path / "data"
    prepare_data(texts, tokenizer_dir, data, progress=False)
    cfg = debug_config(data, tmp_path / "run", max_steps=6, checkpoint_interval=2)
    with pytest.raises(StopRun):
        pretrain(cfg, callbacks=[stop_at(3)])
    prepare_data(list(reversed(texts)), tokenizer_dir, data, progress=False)  # same size
    with pytest.raises(DataError, match="changed since this run was checkpointed"):
        pretrain(cfg, resume=True)
    prepare_data(texts, tokenizer_dir, data, progress=False)  # the data it was trained on
    assert pretrain(cfg, resume=True).step == 6


class ListTokenizer:
    """A tokenizer with only ``encode_batch`` (like a tokenizer service's client)."""

    def __init__(self, tok):
        self.tok = tok
        self.n_vocab, self.eot_token, self.fingerprint = tok.n_vocab, tok.eot_token, "list"
        self.threads: set[str] = set()

    def encode_batch(self, texts, **kwargs):
        import threading

        self.threads.add(threading.current_thread().name)
        return self.tok.encode_batch(texts, **kwargs)


def test_a_failed_prepare_drops_the_queued_batches_instead_of_waiting_for_them():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    started, release = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(timeout=30)

    pool = ThreadPoolExecutor(1)
    try:
        running = pool.submit(hold)
        queued = [pool.submit(int) for _ in range(3)]
        assert started.wait(timeout=30)
        with pytest.raises(KeyboardInterrupt), prepare_module._running(pool):
            raise KeyboardInterrupt  # a plain `with pool:` would block here until release
        assert all(f.cancelled() for f in queued)
    finally:
        release.set()
    assert running.result(timeout=30) is True


@pytest.mark.parametrize("how", ["fork", "spawn", "threads"])
def test_every_encoding_pool_gives_the_ids_of_one_process(
    how, tmp_path, tok, tokenizer_dir, texts, monkeypatch
):
    docs = [t for t in texts if t.strip()][:40]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = tokenizer_dir
    if how == "spawn":  # what macOS and Windows get: workers load the tokenizer directory
        monkeypatch.setattr(prepare_module.sys, "platform", "darwin")
    if how == "threads":
        tokenizer = ListTokenizer(tok)
    pools: list[object] = []
    real = prepare_module._encoding_pool

    def spy(*args):
        pool, fn = real(*args)
        pools.append(pool)
        return pool, fn

    monkeypatch.setattr(prepare_module, "_encoding_pool", spy)
    prepare_data(
        str(tmp_path / "c.jsonl"), tokenizer, tmp_path / "d", batch_bytes=2000, num_proc=2,
        progress=False,
    )  # fmt: skip
    assert stream(tmp_path / "d") == expected(tok, docs)
    kind = type(pools[0]).__name__
    if how == "threads":
        assert kind == "ThreadPoolExecutor" and len(tokenizer.threads) >= 1
        assert "MainThread" not in tokenizer.threads
    else:
        assert kind == "ProcessPoolExecutor"
        assert pools[0]._mp_context.get_start_method() == how
