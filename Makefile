# gptforge: every recipe goes through `uv run` except the serve targets (they exec the server).
# `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
UV := python3 -m uv
RUN := $(UV) run --locked
PYTEST_ARGS ?=

# Demo / pipeline knobs
RUN_DIR ?= runs/demo
PRESET ?= tiny
ARCH ?= gpt
DATA ?=
STEPS ?=
CKPT ?= $(RUN_DIR)/pretrain
OUT ?=
PROMPT ?= The
MAX_NEW_TOKENS ?= 64
TOKENIZER ?= $(RUN_DIR)/tokenizer
HOST ?= 127.0.0.1
PORT ?=

.PHONY: help bootstrap sync build lock-check demo test test-slow test-gpu test-load lint format typecheck proto proto-check \
	bench bench-tokenizer bench-prepare bench-gguf bench-train bench-train-quality bench-generate bench-mmrec bench-lora llama-cpp litgpt \
	train finetune generate convert-hf convert-gguf convert-arch serve-tokenizer serve-generation

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

bootstrap: ## Install uv if it is missing (python3 -m pip install uv)
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

sync: bootstrap ## Create .venv from uv.lock (uv sync --locked)
	@$(UV) sync --locked --quiet

demo: sync ## The whole pipeline on the embedded default corpus (PRESET= DATA= STEPS= RUN_DIR=)
	$(RUN) gptforge demo --run-dir $(RUN_DIR) --preset $(PRESET) $(if $(DATA),--data '$(DATA)') $(if $(STEPS),--steps $(STEPS))

test: sync ## Run the default test suite (no slow/gpu/load tests)
	$(RUN) pytest -n 2 $(PYTEST_ARGS)

test-slow: sync ## Run the slow tests
	$(RUN) pytest -n 2 -m slow $(PYTEST_ARGS)

# `make sync` gives a CUDA torch on a Linux GPU server, so the GPU tests run in .venv when its torch
# sees a GPU; GPU_PYTHON= names another Python with a CUDA torch (a GPU machine without a package
# index), which then runs with the workspace sources on PYTHONPATH.
GPU_PYTHON ?= $(shell test -x .venv/bin/python && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null && echo .venv/bin/python || echo python3)
empty :=
space := $(empty) $(empty)
WORKSPACE_PATH := $(subst $(space),:,$(wildcard packages/*/src services/*/src)):.

test-gpu: ## Run the GPU tests (tests/gpu) in .venv when its torch sees CUDA, else with GPU_PYTHON
	PYTHONPATH=$(WORKSPACE_PATH) $(GPU_PYTHON) -m pytest -m gpu tests/gpu $(PYTEST_ARGS)

test-load: sync ## Run the load/concurrency tests (prints the figures docs/services.md reports)
	$(RUN) pytest -m load -s $(PYTEST_ARGS)

lint: sync ## ruff check + format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: sync ## Apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

build: sync ## Build every member's wheel and sdist into dist/
	$(UV) build --all-packages -q -o dist

lock-check: bootstrap ## Fail if uv.lock is stale or names a local path
	$(UV) lock --check
	@! grep -nE 'path = "/|registry = "/|file://' uv.lock || { echo "uv.lock names a local path: lock against the public index"; exit 1; }

typecheck: sync ## mypy over the packages
	$(RUN) mypy -p gptforge.fileio -p gptforge.corpus -p gptforge.tokenizer -p gptforge.api -p gptforge.modeling -p gptforge.training \
		-p gptforge.sampling -p gptforge.conversion -p gptforge.demo -p gptforge.cli -p gptforge.services.tokenizer -p gptforge.services.generation

proto: sync ## Regenerate the protobuf/gRPC code from proto/ (pinned grpcio-tools)
	$(RUN) python tools/gen_proto.py

proto-check: proto ## Fail if the committed generated code is stale
	git diff --exit-code -- packages/api/src
	@test -z "$$(git status --porcelain -- packages/api/src)" || { git status --short -- packages/api/src; echo "generated files are not committed: run make proto and commit"; exit 1; }

bench: sync ## Run every benchmark and write bench/results.md
	$(RUN) python bench/run_all.py

bench-tokenizer: sync ## Tokenizer training/encode/service benchmark vs HF tokenizers and tiktoken
	$(RUN) python bench/bench_tokenizer.py

bench-prepare: sync ## data prepare vs a tiktoken baseline: peak RSS, CPU-s, wall at two corpus sizes
	$(RUN) python bench/bench_prepare.py

bench-train: sync ## Forward+backward+AdamW tokens/s vs transformers (tiny, gpt2)
	$(RUN) python bench/bench_train.py

bench-train-quality: sync ## Default recipe vs a plain baseline at equal steps
	$(RUN) python bench/bench_train_quality.py

bench-generate: sync ## Decode tokens/s vs transformers (and llama.cpp), service throughput
	$(RUN) python bench/bench_generate.py

# bench-gguf does not depend on `sync` (an exact sync would remove the llama-cpp extra that
# `make llama-cpp` installs); `uv run` installs what the lock needs and keeps the extra.
bench-gguf: bootstrap ## GGUF types: file size, perplexity vs f16, llama.cpp ppl and decode tok/s (GGUF_CKPT= a trained run)
	$(RUN) python bench/bench_gguf.py $(if $(GGUF_CKPT),--ckpt $(GGUF_CKPT))

llama-cpp: sync ## Build llama-cpp-python (compiles llama.cpp) in ~/.cache/gptforge and add the llama-cpp extra to .venv
	$(RUN) python -c "from tests.conversion.test_llama_cpp import llama_cpp_python as f; print(f())"
	CMAKE_ARGS=-DGGML_NATIVE=OFF CMAKE_BUILD_PARALLEL_LEVEL=2 $(UV) sync --locked --quiet --all-packages --extra llama-cpp

litgpt: sync ## Build litgpt (pulls lightning) in ~/.cache/gptforge/litgpt-venv, the LLaMA peer of bench-train
	$(UV) venv -q --allow-existing --python $(CURDIR)/.venv/bin/python $(HOME)/.cache/gptforge/litgpt-venv
	$(UV) pip install -q --python $(HOME)/.cache/gptforge/litgpt-venv/bin/python \
		"torch==$$($(RUN) python -c 'import torch; print(torch.__version__)')" litgpt

bench-mmrec: sync ## MM-Rec vs GPT: validation loss, generation memory and tokens/s vs context
	$(RUN) python bench/bench_mmrec.py

bench-lora: sync ## LoRA vs full fine-tuning: exact match, trainable state, peak RSS, step time
	$(RUN) python bench/bench_lora.py

train: sync ## Pre-train (ARCH= PRESET= DATA=prepared data dir, default RUN_DIR/data; OUT= STEPS=)
	$(RUN) gptforge train --arch $(ARCH) --preset $(PRESET) --data $(or $(DATA),$(RUN_DIR)/data) --out $(or $(OUT),runs/train) $(if $(STEPS),--max-steps $(STEPS))

finetune: sync ## Instruction fine-tune (CKPT= DATA=FILE.jsonl OUT= STEPS=)
	$(RUN) gptforge finetune --from $(CKPT) $(if $(DATA),--data $(DATA)) --out $(or $(OUT),runs/finetune) $(if $(STEPS),--max-steps $(STEPS))

generate: sync ## Generate text (CKPT= PROMPT= MAX_NEW_TOKENS=)
	$(RUN) gptforge generate --ckpt $(CKPT) --prompt "$(PROMPT)" --max-new-tokens $(MAX_NEW_TOKENS)

convert-hf: sync ## Export a run to a Hugging Face directory (CKPT= OUT=)
	$(RUN) gptforge convert to-hf --ckpt $(CKPT) --out $(or $(OUT),runs/hf)

convert-gguf: sync ## Export a run to GGUF (CKPT= OUT=model.gguf)
	$(RUN) gptforge convert to-gguf --ckpt $(CKPT) --out $(or $(OUT),runs/model.gguf)

convert-arch: sync ## Transfer weights into MM-Rec (CKPT= OUT= PRESET=mmrec-..., default: matched to CKPT)
	$(RUN) gptforge convert arch --source $(CKPT) --target mmrec $(if $(filter mmrec%,$(PRESET)),--preset $(PRESET)) --out $(or $(OUT),runs/mmrec-converted)

# The serve targets exec the server from .venv (synced first) instead of `uv run`, which would
# stay its parent: a signal to the recipe's process then reaches the server itself, and no
# killed `uv run` leaves it serving its port orphaned (docs/services.md: supervisors).
serve-tokenizer: sync ## Serve the tokenizer over gRPC (TOKENIZER= HOST= PORT=)
	exec .venv/bin/gptforge serve tokenizer --tokenizer $(TOKENIZER) --host $(HOST) --port $(or $(PORT),50051)

serve-generation: sync ## Serve generation over gRPC (CKPT= HOST= PORT=)
	exec .venv/bin/gptforge serve generation --ckpt $(CKPT) --host $(HOST) --port $(or $(PORT),50052)

