"""Finding and loading a model for generation: run dirs, model dirs, Hugging Face dirs."""

from __future__ import annotations

import pytest
from gptforge.sampling import SamplingParams, generate_batch
from gptforge.sampling.loading import find_model_dir, load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, debug_model, tokenizer):
    from gptforge.modeling.io import save_model_dir

    root = tmp_path_factory.mktemp("run")
    tokenizer.save(root / "tokenizer")
    save_model_dir(debug_model, root / "pretrain", tokenizer_dir=root / "tokenizer")
    return root


def _greedy(model, tok):
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    return generate_batch(model, [tok.encode("hello")], params, tokenizer=tok)[0].token_ids


def test_run_dir_finds_its_model_subdirectory(run_dir, debug_model, tokenizer):
    path, kind = find_model_dir(run_dir)
    assert path == run_dir / "pretrain" and kind == "gptforge"
    model, tok = load_checkpoint(run_dir)
    assert tok.fingerprint == tokenizer.fingerprint
    assert _greedy(model, tok) == _greedy(debug_model, tokenizer)


def test_hugging_face_directory_loads_through_conversion(run_dir, tmp_path, debug_model, tokenizer):
    from gptforge.conversion.hf import export_hf

    hf_dir = export_hf(run_dir / "pretrain", tmp_path / "hf")
    assert find_model_dir(hf_dir)[1] == "hf"
    model, tok = load_checkpoint(hf_dir)
    assert _greedy(model, tok) == _greedy(debug_model, tokenizer)


def test_missing_model_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_model_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="pretrain/config.json"):
        find_model_dir(tmp_path)
