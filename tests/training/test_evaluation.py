"""``gptforge eval``: perplexity equals transformers' on the HF export; multiple choice; report."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

TEXT = "\n\n".join(
    f"Note {i}: the {w} fox jumps over {i % 7} lazy dogs, then rests." for i, w in
    enumerate(["quick", "brown", "red", "small", "tired", "happy"] * 4)
)  # fmt: skip


@pytest.fixture(scope="module", params=["debug", "llama-debug"])
def model_dirs(request, tmp_path_factory, tokenizer_dir):
    """Our random model directory and its Hugging Face export."""
    from gptforge.conversion import export_hf
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir
    from gptforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp(request.param)
    n_vocab = Tokenizer.from_dir(tokenizer_dir).n_vocab
    torch.manual_seed(0)
    model = build_model(get_config(request.param, vocab_size=n_vocab, block_size=64))
    with torch.no_grad():  # non-trivial biases and norms
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = save_model_dir(model, root / "ours", tokenizer_dir=tokenizer_dir)
    return ours, export_hf(ours, root / "hf")


def hf_sliding_window_nll(hf_dir, ids, max_length, stride):
    """The Hugging Face perplexity guide's loop, counting exactly the tokens each window scores."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor([ids])
    nll, count, prev_end = 0.0, 0, 0
    seq_len = ids.size(1)
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())
        nll += float(loss) * n
        count += n
        prev_end = end
        if end == seq_len:
            break
    return nll, count


@pytest.mark.parametrize(("max_length", "stride"), [(64, 64), (64, 16), (40, 25)])
def test_perplexity_equals_transformers_on_the_hf_export(model_dirs, max_length, stride):
    from gptforge.modeling.io import load_model_dir
    from gptforge.tokenizer import Tokenizer
    from gptforge.training.evaluation import perplexity_report

    ours, hf_dir = model_dirs
    tok = Tokenizer.from_dir(ours / "tokenizer")
    ids = tok.encode(TEXT)
    assert len(ids) > 3 * max_length
    got = perplexity_report(load_model_dir(ours), tok, ids, max_length=max_length, stride=stride)
    nll, count = hf_sliding_window_nll(hf_dir, ids, max_length, stride)
    assert got["tokens"] == count
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / got["bytes"], rel=1e-4)
    if stride < max_length:  # overlapping windows score every token but the first
        assert count == len(ids) - 1
        assert got["bytes"] == len(TEXT.encode()) - len(tok.decode_bytes(ids[:1]))


def test_multiple_choice_picks_the_likeliest_choice(model_dirs, tmp_path):
    from gptforge.modeling.io import load_model_dir
    from gptforge.tokenizer import Tokenizer
    from gptforge.training.evaluation import (
        continuation_logprobs,
        encode_pair,
        multiple_choice,
        read_choice_records,
    )

    ours, _ = model_dirs
    model, tok = load_model_dir(ours), Tokenizer.from_dir(ours / "tokenizer")
    rows = [
        {"context": "The quick brown fox ", "choices": ["jumps", "sleeps all day", "x"]},
        {"context": "Note 3: the", "choices": [" red fox", " lazy dog", " quick"]},
        {"context": "", "choices": ["hello", "Note 1"]},
    ]
    best, worst = [], []
    for row in rows:
        ctx = row["context"] or tok.decode([tok.eot_token])
        scores = [
            s
            for s, _ in continuation_logprobs(
                model, [encode_pair(tok, ctx, c) for c in row["choices"]]
            )
        ]
        best.append({**row, "label": scores.index(max(scores))})
        worst.append({**row, "label": scores.index(min(scores))})
    for records, acc in ((best, 1.0), (worst, 0.0)):
        path = tmp_path / "mc.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        assert multiple_choice(model, tok, read_choice_records(path))["acc"] == acc
    path.write_text('{"context": "a", "choices": ["b"], "label": 3}\n')
    with pytest.raises(ValueError, match="mc.jsonl:1 needs 'context'"):
        read_choice_records(path)


def test_eval_cli_writes_one_report(model_dirs, tmp_path):
    from gptforge.cli.main import app
    from typer.testing import CliRunner

    ours, _ = model_dirs
    text = tmp_path / "notes.txt"
    text.write_text(TEXT)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        json.dumps({"context": "The fox", "choices": [" jumps", " rests"], "label": 0}) + "\n"
    )
    out = tmp_path / "report.json"
    args = ["eval", "--ckpt", str(ours), "--text", str(text), "--choices", str(mc)]
    result = CliRunner().invoke(
        app, [*args, "--stride", "16", "--json", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["perplexity:text"]["stride"] == 16 and report["multiple_choice"]["total"] == 1
    assert "bits_per_byte" in result.output
    result = CliRunner().invoke(app, ["eval", "--ckpt", str(ours), "--device", "cpu"])
    assert result.exit_code == 1 and "nothing to evaluate" in result.output
    bad = CliRunner().invoke(app, [*args, "--max-length", "999", "--device", "cpu"])
    assert bad.exit_code == 1 and "--max-length 999 must be in [2, 64]" in bad.output


def test_held_out_records_are_the_fine_tunes_with_max_samples_and_from_a_checkpoint(tmp_path):
    """eval --exact-match scores the records finetune held out: --max-samples cuts before the
    split, and a checkpoint (no train_config.json) reads the run's config from its manifest."""
    from gptforge.training.config import FinetuneConfig
    from gptforge.training.evaluation import held_out_records
    from gptforge.training.finetune import split_records
    from gptforge.training.tasks import generate_tasks

    cfg = FinetuneConfig(out=str(tmp_path), num_examples=60, max_samples=20, val_fraction=0.25)
    records = generate_tasks(cfg.num_examples, seed=cfg.seed, tasks=cfg.task_names)
    _, want = split_records(records[:20], cfg.val_fraction, cfg.seed)
    saved = {"kind": "finetune", "config": cfg.to_dict()}
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert held_out_records(tmp_path) == (want[: cfg.eval_examples], cfg.template)
    step = tmp_path / "checkpoints" / "step_000010"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"step": 10, **saved}))
    assert held_out_records(step) == (want[: cfg.eval_examples], cfg.template)
