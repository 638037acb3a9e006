"""Instruction templates, response-only loss masks, the generated task set and fine-tuning."""

from __future__ import annotations

import json

import pytest
from gptforge.sampling.templates import (
    INST,
    RESP_END,
    SPECIAL_TOKENS,
    encode_record,
    render_text,
    stop_ids,
)
from gptforge.training.instruct import InstructionDataset, read_records
from gptforge.training.tasks import DEFAULT_TASKS, OPPOSITES, TASK_NAMES, generate_tasks

from tests.training.helpers import debug_config


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from gptforge.tokenizer import Tokenizer

    t = Tokenizer.from_dir(tokenizer_dir)
    t.add_special_tokens(SPECIAL_TOKENS)
    return t


def test_templates_render_as_documented():
    rec = {"instruction": "Add the numbers.", "input": "2 + 3", "output": "5"}
    assert render_text(rec, "inst") == ("<INST>Add the numbers.\n2 + 3</INST><RESP>", "5</RESP>")
    prompt, resp = render_text(rec, "alpaca")
    assert (
        prompt.endswith("### Input:\n2 + 3\n\n### Response:\n")
        and "### Instruction:\nAdd the numbers." in prompt
    )
    assert resp == "5<|endoftext|>"
    with pytest.raises(ValueError, match="allowed: \\['inst', 'alpaca'\\]"):
        render_text(rec, "chatml")


def test_encoding_uses_special_ids_and_never_injects_them(tok):
    rec = {"instruction": "say <INST> please", "input": "", "output": "ok </RESP>"}
    prompt, response = encode_record(rec, "inst", tok)
    specials = set(tok.special_tokens.values())
    assert prompt[0] == tok.special_tokens[INST] and response[-1] == tok.special_tokens[RESP_END]
    assert not specials & set(prompt[1:-2]) and not specials & set(response[:-1])
    assert tok.decode(prompt + response) == "<INST>say <INST> please</INST><RESP>ok </RESP></RESP>"
    assert stop_ids("inst", tok) == [tok.eot_token, tok.special_tokens[RESP_END]]
    a_prompt, a_resp = encode_record(rec, "alpaca", tok)
    assert a_resp[-1] == tok.eot_token and tok.decode(a_prompt).startswith(
        "Below is an instruction"
    )


def test_loss_only_on_response_tokens():
    ds = InstructionDataset([([1, 2, 3], [4, 5]), ([1, 2], [6, 7, 8, 9])], pad_id=0)
    x, y = ds.batch([0, 1])
    assert x.tolist() == [[1, 2, 3, 4, 0], [1, 2, 6, 7, 8]]
    assert y.tolist() == [[-100, -100, 4, 5, -100], [-100, 6, 7, 8, 9]]


def test_generated_tasks_are_deterministic_and_checkable():
    a, b = (
        generate_tasks(200, seed=4, tasks=TASK_NAMES),
        generate_tasks(200, seed=4, tasks=TASK_NAMES),
    )
    assert a == b and a != generate_tasks(200, seed=5, tasks=TASK_NAMES)
    assert {r["task"] for r in a} == set(TASK_NAMES)
    for r in a:
        words = r["input"].split()
        if r["task"] == "add":
            x, y = r["input"].split(" + ")
            assert int(r["output"]) == int(x) + int(y)
        if r["task"] == "capitalise":
            assert r["output"] == r["input"].upper()
        if r["task"] == "reverse":
            assert r["output"].split() == words[::-1]
        if r["task"] == "first":
            assert r["output"] == words[0]
        if r["task"] == "last":
            assert r["output"] == words[-1] and len(words) >= 2
        if r["task"] == "count":
            assert r["output"] == str(len(words))
        if r["task"] == "next_letter":
            assert ord(r["output"]) == ord(r["input"]) + 1 and r["output"].isalpha()
        if r["task"] == "opposite":
            assert (r["input"], r["output"]) in OPPOSITES or (r["output"], r["input"]) in OPPOSITES


def test_default_task_mix_is_the_short_answer_families():
    assert set(DEFAULT_TASKS) <= set(TASK_NAMES)
    assert {r["task"] for r in generate_tasks(50, seed=0)} == set(DEFAULT_TASKS)
    from gptforge.training.config import FinetuneConfig

    assert FinetuneConfig(from_run="x").task_names == DEFAULT_TASKS
    assert FinetuneConfig(from_run="x", tasks="add, copy").task_names == ("add", "copy")
    with pytest.raises(ValueError, match="unknown families \\['nope'\\]; choose from"):
        generate_tasks(3, tasks=("first", "nope"))


def test_exact_match_counts_stripped_answers_and_caps_decoding(tok):
    """A stub model that always answers one fixed token: exact match per task, short decode."""
    import torch
    from gptforge.training.instruct import exact_match
    from gptforge.training.tasks import WORDS

    # a word the test tokenizer keeps as one token with its leading space (" file" -> "file")
    word = next(w for w in WORDS if len(tok.encode(" " + w)) == 1)
    answer = tok.encode(" " + word)
    stop = tok.special_tokens[RESP_END]

    class Fixed(torch.nn.Module):
        """Emits ``answer`` then the stop token; counts forward calls."""

        def __init__(self, vocab: int, stops: bool = True) -> None:
            super().__init__()
            self.stops = stops
            self.config = type("C", (), {"block_size": 64, "vocab_size": vocab})()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        max_context = 64  # the model contract: most positions one sequence may span

        def setup_caches(self, max_batch_size: int, max_seq_len: int) -> None:
            pass  # the answer depends on the last token only: nothing to cache

        def forward(self, idx, targets=None, input_pos=None, rows=None):
            self.calls += 1
            logits = torch.zeros(idx.shape[0], idx.shape[1], self.config.vocab_size)  # (B, T, V)
            said = idx[:, -1] == answer[0]  # (B,) answered already: stop next
            logits[:, -1, answer[0]] = 1.0
            if self.stops:
                logits[said, -1, stop] = 2.0
            return logits, None

    recs = [
        {"instruction": "Opposite.", "input": "up", "output": word, "task": "opposite"},
        {"instruction": "Opposite.", "input": "on", "output": "off", "task": "opposite"},
        {"instruction": "Last word.", "input": f"a {word}", "output": word, "task": "last"},
    ]
    model = Fixed(tok.n_vocab)
    got = exact_match(model, tok, recs, "inst")
    assert got["correct"] == 2 and got["total"] == 3
    assert got["per_task"] == {"last": 1.0, "opposite": 0.5}
    assert model.calls == 2 * 2  # two prompt lengths, two tokens each (answer, stop)
    never_stops = Fixed(tok.n_vocab, stops=False)
    assert exact_match(never_stops, tok, recs[:1], "inst")["correct"] == 0
    longest = len(encode_record(recs[0], "inst", tok)[1])  # answer ids + the stop id
    assert never_stops.calls == longest + 3 < 32


def test_read_records_names_the_bad_record(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"instruction": "a", "output": "b"})
        + "\n"
        + json.dumps({"instruction": 3})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"d.jsonl:2 needs string fields"):
        read_records(path)
    path.write_text("{bad\n")
    with pytest.raises(ValueError, match=r"d.jsonl:1 is not valid JSON"):
        read_records(path)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data_dir):
    from gptforge.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("base")
    pretrain(
        debug_config(
            data_dir,
            out,
            max_steps=20,
            lr=3e-3,
            context_length=64,
            eval_interval=0,
            checkpoint_interval=0,
        )
    )
    return out


def test_finetune_grows_vocab_keeps_ties_and_writes_chat_dir(tmp_path, base_run):
    from gptforge.modeling.io import load_model_dir
    from gptforge.sampling.chat import ChatModel
    from gptforge.tokenizer import Tokenizer
    from gptforge.training.config import FinetuneConfig
    from gptforge.training.finetune import finetune

    before = load_model_dir(base_run)
    cfg = FinetuneConfig(
        from_run=str(base_run),
        out=str(tmp_path / "sft"),
        max_steps=3,
        batch_size=4,
        num_examples=60,
        eval_examples=6,
        progress=False,
        eval_interval=0,
        max_length=65,
    )
    result = finetune(cfg)
    tok = Tokenizer.from_dir(tmp_path / "sft" / "tokenizer")
    assert set(SPECIAL_TOKENS) <= set(tok.special_tokens)
    model = load_model_dir(tmp_path / "sft")
    assert model.config.vocab_size == tok.n_vocab == before.config.vocab_size + 4
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    chat = json.loads((tmp_path / "sft" / "chat.json").read_text())
    assert chat["template"] == "inst" and chat["before"]["total"] == 6
    assert 0.0 <= result.after["accuracy"] <= 1.0
    bot = ChatModel(tmp_path / "sft")
    assert isinstance(bot.respond("Repeat the words.", "blue moon", max_new_tokens=4), str)
    with pytest.raises(ValueError, match="not a fine-tuned run"):
        ChatModel(base_run)

    from gptforge.cli.main import app
    from typer.testing import CliRunner

    args = [
        "chat",
        "--ckpt",
        str(tmp_path / "sft"),
        "--prompt",
        "Add the numbers.",
        "--input",
        "1 + 2",
    ]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["chat", "--ckpt", str(base_run), "--prompt", "hi"])
    assert result.exit_code == 1 and "gptforge finetune" in result.output


def _accuracy_gain(base_run, out, **overrides):
    from gptforge.training.config import FinetuneConfig
    from gptforge.training.finetune import finetune

    values = dict(
        from_run=str(base_run),
        out=str(out),
        batch_size=32,
        lr=1e-2,
        num_examples=1500,
        eval_examples=96,
        max_length=65,
        progress=False,
        eval_interval=0,
        checkpoint_interval=0,
    )
    values.update(overrides)
    result = finetune(FinetuneConfig(**values))
    return result.before["accuracy"], result.after["accuracy"], result.after["per_task"]


def test_held_out_exact_match_rises(tmp_path, base_run):
    """A debug model learns the default task mix in 250 steps (~8 s of CPU): measured 0% -> 21%."""
    before, after, per_task = _accuracy_gain(base_run, tmp_path / "sft", max_steps=250)
    assert before <= 0.05
    assert after >= before + 0.10, per_task


@pytest.mark.slow
def test_held_out_exact_match_rises_on_the_multi_token_families(tmp_path, base_run):
    """The six multi-token families, 900 steps (~30 s of CPU): measured 0% -> 30% (39% with
    seed 1). At 600 steps the result swung between 10% and 68% with the seed and with the last
    bits of rounding in the base model (measured over 9 seeds and 3 base models), too close
    to the bar."""
    before, after, per_task = _accuracy_gain(
        base_run,
        tmp_path / "sft",
        max_steps=900,
        tasks="copy,capitalise,reverse,add,successor,first",
    )
    assert after >= before + 0.15, per_task


def test_accumulation_does_not_change_the_response_only_step(tmp_path, base_run):
    # Micro-batches hold different numbers of response tokens; the step must still minimise
    # the mean over all of them, so 2 x 2 with accumulation ends where 1 x 4 does.
    import torch
    from gptforge.training.config import FinetuneConfig
    from gptforge.training.finetune import finetune
    from safetensors.torch import load_file

    common = dict(
        from_run=str(base_run), max_steps=3, num_examples=60, eval_examples=2, progress=False,
        eval_interval=0, max_length=65, checkpoint_interval=0,
    )  # fmt: skip
    finetune(FinetuneConfig(out=str(tmp_path / "a"), batch_size=4, grad_accum=1, **common))
    finetune(FinetuneConfig(out=str(tmp_path / "b"), batch_size=2, grad_accum=2, **common))
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=0, msg=key)
