"""Data preparation, the shard format, memory-mapped windows and small-text datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gptforge.training.data import (
    DataError,
    EpochSampler,
    SlidingWindowDataset,
    TokenShards,
    TokenWindows,
    split_text,
    text_datasets,
    token_dtype,
)
from gptforge.training.prepare import prepare_data


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_shards_hold_documents_joined_by_eot(data_dir, tokenizer_dir, texts):
    from gptforge.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["tokenizer_fingerprint"] == tok.fingerprint
    assert meta["dtype"] == "uint16" and meta["documents"] == len(texts)
    expected = []
    for text in texts:
        expected += tok.encode(text) + [tok.eot_token]
    train, val = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    assert train.num_tokens + val.num_tokens == len(expected) == meta["tokens"]
    assert 0.08 < val.num_tokens / len(expected) <= 0.1
    # Every routed block is a contiguous slice of the stream: the multiset of ids matches.
    got = np.concatenate([np.asarray(s) for s in train.shards + val.shards])
    assert np.array_equal(np.sort(got), np.sort(np.array(expected)))
    assert (data_dir / "tokenizer" / "tokenizer.json").exists()


def test_shard_size_limit_and_special_text_is_plain(tmp_path, tokenizer_dir):
    from gptforge.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    docs = ["a <|endoftext|> b", "apple river stone " * 20]
    meta = prepare_data(
        docs, tokenizer_dir, tmp_path, val_fraction=0.0, shard_tokens=16, progress=False
    )
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) > 2 and all(s["tokens"] <= 16 for s in shards)
    ids = np.concatenate([np.asarray(s) for s in TokenShards(tmp_path, "train").shards]).tolist()
    assert ids[: ids.index(tok.eot_token)] == tok.encode(docs[0], disallowed_special=())
    assert ids.count(tok.eot_token) == 2  # the literal text never became an EOT id


def test_threads_give_identical_shards(tmp_path, tokenizer_dir, texts):
    seq = prepare_data(
        texts, tokenizer_dir, tmp_path / "seq", block_tokens=256, num_proc=1, progress=False
    )
    par = prepare_data(
        texts,
        tokenizer_dir,
        tmp_path / "par",
        block_tokens=256,
        num_proc=3,
        batch_bytes=300,
        progress=False,
    )
    assert seq["splits"] == par["splits"]
    for shard in seq["splits"]["train"]["shards"] + seq["splits"]["val"]["shards"]:
        assert (tmp_path / "seq" / shard["file"]).read_bytes() == (
            tmp_path / "par" / shard["file"]
        ).read_bytes()
    assert seq["checksum"] == par["checksum"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["par", "seq"]  # no temporaries left


def test_out_of_vocabulary_ids_are_caught_at_load(tmp_path, data_dir):
    shards = TokenShards(data_dir, "train")
    with pytest.raises(DataError, match=r"vocabulary has 100 ids"):
        shards.check_vocab(100)
    # A shard edited after preparation (meta still claims a small max id) is scanned, not trusted.
    meta = json.loads((data_dir / "meta.json").read_text())
    (tmp_path / "train_000000.bin").write_bytes(np.array([1, 2, 999, 3], dtype=np.uint16).tobytes())
    meta["splits"] = {
        "train": {"tokens": 4, "shards": [{"file": "train_000000.bin", "tokens": 4}]},
        "val": {"tokens": 0, "shards": []},
    }
    meta["max_token_id"] = 3
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"token id 999 at offset 2 of train_000000.bin"):
        TokenShards(tmp_path, "train").check_vocab(500)


def test_truncated_shard_and_missing_meta_are_refused(tmp_path, data_dir):
    with pytest.raises(DataError, match="gptforge data prepare"):
        TokenShards(tmp_path, "train")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    shard = copy / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="incomplete"):
        TokenShards(copy, "train")


def test_windows_are_next_token_pairs(data_dir):
    shards = TokenShards(data_dir, "train")
    windows = TokenWindows(shards, context=16, stride=8)
    flat = np.asarray(shards.shards[0])
    assert len(windows) == (len(flat) - 17) // 8 + 1
    x, y = windows.batch([0, 3])
    assert x.shape == y.shape == (2, 16) and x.dtype == torch.int64
    assert x[1].tolist() == flat[24:40].tolist() and y[1].tolist() == flat[25:41].tolist()


def test_sliding_window_dataset_matches_gptdatasetv1():
    ids = list(range(20))
    ds = SlidingWindowDataset(ids, max_length=4, stride=3)
    # GPTDatasetV1: for i in range(0, len(ids) - max_length, stride)
    starts = list(range(0, len(ids) - 4, 3))
    assert len(ds) == len(starts)
    for i, s in enumerate(starts):
        assert ds[i][0].tolist() == ids[s : s + 4]
        assert ds[i][1].tolist() == ids[s + 1 : s + 5]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (2, 4)
    with pytest.raises(DataError, match="cannot fill one window"):
        SlidingWindowDataset([1, 2], max_length=4, stride=1)


def test_text_split_is_90_10(tokenizer_dir, texts):
    from gptforge.tokenizer import Tokenizer

    text = "\n".join(texts[:40])
    train_text, val_text = split_text(text)
    assert train_text + val_text == text and len(train_text) == int(0.9 * len(text))
    train, val = text_datasets(text, Tokenizer.from_dir(tokenizer_dir), max_length=16, stride=16)
    assert len(train) > 5 * len(val) > 0


def test_sampler_position_resumes_the_same_order():
    a = EpochSampler(n=10, seed=3)
    first = a.take(7)
    state = a.state_dict()
    rest = a.take(9)  # crosses into epoch 1
    b = EpochSampler(n=10, seed=3)
    b.load_state_dict(state)
    assert b.take(9) == rest
    assert sorted(first + rest[:3]) == list(range(10))
    with pytest.raises(DataError, match="same data"):
        EpochSampler(n=11, seed=3).load_state_dict(state)
