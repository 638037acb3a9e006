"""``gptforge tokenizer train|encode|decode|info`` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

from gptforge.cli.main import app
from gptforge.tokenizer import EOT, INST, Tokenizer
from typer.testing import CliRunner

runner = CliRunner()


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [
        f"Line {i}: the tokenizer learns frequent words like tokenizer and corpus.\n"
        for i in range(200)
    ]
    (corpus / "a.txt").write_text("".join(lines))
    (corpus / "b.jsonl").write_text(
        "".join(json.dumps({"text": line}) + "\n" for line in lines[:50])
    )
    return corpus


def test_train_encode_decode_info(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    result = runner.invoke(
        app,
        [
            "tokenizer",
            "train",
            "--input",
            str(_corpus(tmp_path)),
            "--vocab-size",
            "320",
            "--chat-tokens",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "n_vocab=320" in result.output
    tok = Tokenizer.from_dir(out)
    assert tok.n_vocab == 320 and INST in tok.special_tokens

    result = runner.invoke(
        app, ["tokenizer", "encode", "--tokenizer", str(out), "--json", "the tokenizer"]
    )
    assert result.exit_code == 0, result.output
    ids = json.loads(result.stdout.splitlines()[0])["ids"]
    assert ids == tok.encode("the tokenizer")

    result = runner.invoke(app, ["tokenizer", "decode", "--tokenizer", str(out), *map(str, ids)])
    assert result.exit_code == 0 and result.stdout.strip() == "the tokenizer"

    result = runner.invoke(app, ["tokenizer", "info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_vocab"] == 320 and info["fingerprint"] == tok.fingerprint


def test_encode_special_text_needs_allow_special(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    tok = Tokenizer.train(texts=["some text here"] * 3, vocab_size=270, show_progress=False)
    tok.save(out)
    result = runner.invoke(app, ["tokenizer", "encode", "-t", str(out), f"a{EOT}"])
    assert result.exit_code == 2
    assert "--allow-special" in result.output and "allowed_special" in result.output
    result = runner.invoke(
        app, ["tokenizer", "encode", "-t", str(out), "--allow-special", f"a{EOT}"]
    )
    assert result.exit_code == 0
    assert result.stdout.split()[-1] == str(tok.eot_token)


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tokenizer", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "error: tokenizer directory" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app, ["tokenizer", "train", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(
        app, ["tokenizer", "train", "--vocab-size", "10", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "vocab_size >= 257" in result.output


def test_encode_with_a_directory_of_gpt2_files(gpt2_source: Path) -> None:
    tok = Tokenizer.gpt2(gpt2_source)
    result = runner.invoke(
        app, ["tokenizer", "encode", "-t", str(gpt2_source), "--json", "Hello world"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["ids"] == tok.encode("Hello world")
    result = runner.invoke(app, ["tokenizer", "info", str(gpt2_source), "--json"])
    assert json.loads(result.stdout)["name"] == "gpt2"


def _turkish_tokenizer(tmp_path: Path, pre: str) -> Path:
    corpus = tmp_path / f"tr-{pre}.txt"
    corpus.write_text("İstanbul'da Ali'nin evi var. Ankara'da Ali'nin okulu var.\n" * 80)
    out = tmp_path / f"tok-{pre}"
    args = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300",
            "--no-progress", "--out", str(out), "--pre-tokenizer", pre]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"({pre} pre-tokenizer)" in result.output
    return out


def test_encode_pieces_show_text_and_mark_partial_utf8(tmp_path: Path) -> None:
    tok_dir = _turkish_tokenizer(tmp_path, "tekken")
    result = runner.invoke(app, ["tokenizer", "encode", "-t", str(tok_dir), "--pieces",
                                 "İstanbul'da Ali'nin Ş"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()[1:]
    assert [line.split(None, 1)[1] for line in lines[:4]] == [
        "'İstanbul'",
        '"\'da"',
        "' Ali'",
        '"\'nin"',
    ]
    # "Ş" never occurs in the corpus: its two UTF-8 bytes are two partial pieces.
    assert [line.split(None, 1)[1] for line in lines[-2:]] == [
        "'<0xC5>'  (partial UTF-8)",
        "'<0x9E>'  (partial UTF-8)",
    ]
    as_json = runner.invoke(app, ["tokenizer", "encode", "-t", str(tok_dir), "--pieces",
                                  "--json", " Ali'nin Ş"])  # fmt: skip
    record = json.loads(as_json.stdout)
    assert record["pieces"][:2] == [" Ali", "'nin"]
    assert record["partial"][:2] == [False, False] and record["partial"][-2:] == [True, True]


def test_pre_tokenizer_choice_changes_the_pieces(tmp_path: Path) -> None:
    tok_dir = _turkish_tokenizer(tmp_path, "gpt2")
    result = runner.invoke(app, ["tokenizer", "encode", "-t", str(tok_dir), "--pieces",
                                 "--json", "İstanbul'da"])  # fmt: skip
    assert json.loads(result.stdout)["pieces"] == ["İstanbul", "'d", "a"]
    info = runner.invoke(app, ["tokenizer", "info", str(tok_dir), "--json"])
    assert json.loads(info.stdout)["pre_tokenizer"] == "gpt2"
    bad = runner.invoke(app, ["tokenizer", "train", "--input", str(tmp_path / "tr-gpt2.txt"),
                              "--out", str(tmp_path / "x"), "--pre-tokenizer", "bert"])  # fmt: skip
    assert bad.exit_code == 2 and "unknown pre-tokenizer 'bert'" in bad.output


def test_merges_are_listed_as_text_in_rank_order(tmp_path: Path) -> None:
    tok_dir = _turkish_tokenizer(tmp_path, "tekken")
    tok = Tokenizer.from_dir(tok_dir)
    result = runner.invoke(app, ["tokenizer", "merges", str(tok_dir), "--limit", "5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    total = len(tok.merges)
    for rank, (line, (a, b)) in enumerate(zip(lines, tok.merges, strict=False), 1):
        assert line.startswith(f"Merge {rank}/{total}: ")
        if all(x.decode("utf-8", "ignore").strip() == x.decode("utf-8", "ignore") for x in (a, b)):
            assert f" -> {(a + b).decode('utf-8', 'replace')}" in line or "<0x" in line
    full = runner.invoke(app, ["tokenizer", "merges", str(tok_dir)]).stdout.splitlines()
    assert len(full) == total
    assert any("Merge" in x and "(partial UTF-8)" in x for x in full)  # İ = C4 B0
    assert any(x.endswith(" -> 'nin") or "+ nin -> 'nin" in x for x in full)
