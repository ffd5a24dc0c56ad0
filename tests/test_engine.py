"""The one-pass transformers engine: exact expectations on a scripted model, properties on the tiny random model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.generation.record import SamplingConfig
from elastic_reasoning.generation.transformers_engine import TransformersEngine
from elastic_reasoning.special_tokens import TokenizerError

from .scripted import scripted_model

GREEDY = SamplingConfig(temperature=0)
PROMPTS = ["What is 3+4?", "Add 12 and 30.", "Find the sum of 1 2 3 4 5 6 7 8 9 and then check it again please"]


@pytest.fixture(scope="module")
def scripted_engine(toy_tokenizer):
    tok = toy_tokenizer
    ids = lambda *words: [tok.convert_tokens_to_ids(w) for w in words]  # noqa: E731
    think, end, eos, one, five, fifty, fifty_three = ids("<think>", "</think>", "</s>", "1", "5", "50", "53")
    # <think> -> 1 -> 2 -> 3 -> 4 -> 5 -> </think> -> 50 -> 51 -> 52 -> 53 -> EOS
    model = scripted_model(tok, {think: one, five: end, end: fifty, fifty_three: eos})
    engine = TransformersEngine(model, tok)
    engine.words = dict(thinking=ids("1", "2", "3", "4", "5"), end=end, solution=ids("50", "51", "52", "53") + [eos])
    return engine


# -- exact expectations on the scripted model ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["single-pass", "two-call"])
@pytest.mark.parametrize("sampling", [GREEDY, SamplingConfig(temperature=1.0, top_p=1.0, seed=3)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("t, s", [(0, 3), (3, 2), (5, 9), (6, 9), (9, 5), (9, 4), (2, 0)])
def test_scripted_budgets_exact(scripted_engine, mode, sampling, t, s):
    w = scripted_engine.words
    c = scripted_engine.generate(["What is 3+4?"], BudgetConfig(thinking_budget=t, solution_budget=s), sampling, mode=mode)[0]
    closes_itself = t >= 6  # five thinking tokens plus its own </think>
    thinking = w["thinking"] if closes_itself else w["thinking"][:t]
    solution = w["solution"][:s]
    assert c.completion_ids == thinking + [w["end"]] + solution
    assert c.sampled_mask == [1] * len(thinking) + [1 if closes_itself else 0] + [1] * len(solution)
    assert c.thinking_tokens == len(thinking) and c.solution_tokens == len(solution)
    assert c.thinking_truncated == (not closes_itself)
    assert c.finish_reason == ("stop" if s >= 5 else "length")


def test_scripted_model_closing_early_is_never_forced(scripted_engine):
    out = scripted_engine.generate(PROMPTS, BudgetConfig(thinking_budget=50, solution_budget=50), GREEDY, num_samples=2)
    assert all(c.forced_tokens == 0 and c.thinking_end == "model" for c in out)


# -- the tiny random model: properties -------------------------------------------------------------------------
def _check_invariants(c, budget: BudgetConfig, end_id: int):
    assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
    for lp, sampled in zip(c.logprobs, c.sampled_mask):  # the one definition (record.py): NaN for forced tokens
        assert (lp <= 1e-6 and lp > float("-inf")) if sampled else lp != lp
    e, si, n = c.end_thinking_index, c.solution_index, len(c.completion_ids)
    assert (e is None) == (si is None) == (not c.thinking_ended)  # a completion from the start of thinking
    if e is not None:
        assert 0 <= e < si <= n
    if budget.thinking_budget is not None:
        assert c.thinking_tokens <= budget.thinking_budget
        sampled_thinking = sum(c.sampled_mask[: c.end_thinking_index]) if c.end_thinking_index is not None else sum(c.sampled_mask)
        assert sampled_thinking <= budget.thinking_budget
    if budget.solution_budget is not None:
        assert c.solution_tokens <= budget.solution_budget
    ended = c.thinking_end in ("model", "budget") or (c.thinking_end == "eos" and budget.eos_in_thinking != "stop")
    thinking_part = c.completion_ids[: c.solution_index] if c.solution_index is not None else c.completion_ids
    assert thinking_part.count(end_id) == (1 if ended else 0)
    if c.thinking_end == "model":
        assert c.forced_tokens == 0
    if c.thinking_truncated:
        assert c.sampled_mask[c.end_thinking_index] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    t=st.integers(0, 12),
    s=st.integers(0, 8),
    n_prompts=st.integers(1, 3),
    num_samples=st.integers(1, 3),
    temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
    top_p=st.sampled_from([1.0, 0.9]),
    top_k=st.sampled_from([0, 20]),
    seed=st.integers(0, 2**16),
    rule=st.sampled_from(["end_thinking", "suppress", "stop"]),
    max_batch=st.integers(1, 8),
)
def test_random_model_respects_every_budget(toy_engine, t, s, n_prompts, num_samples, temperature, top_p, top_k, seed, rule, max_batch):
    budget = BudgetConfig(thinking_budget=t, solution_budget=s, eos_in_thinking=rule)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    toy_engine.max_batch_size = max_batch
    try:
        out = toy_engine.generate(PROMPTS[:n_prompts], budget, sampling, num_samples=num_samples)
    finally:
        toy_engine.max_batch_size = 64
    assert [(c.prompt_index, c.sample_index) for c in out] == [(p, k) for p in range(n_prompts) for k in range(num_samples)]
    end_id = toy_engine.tokenizer.convert_tokens_to_ids("</think>")
    for c in out:
        _check_invariants(c, budget, end_id)


@pytest.mark.parametrize("t, s", [(0, 4), (4, 4), (9, 7), (20, 3)])
def test_one_pass_equals_two_call_under_greedy(toy_engine, t, s):
    budget = BudgetConfig(thinking_budget=t, solution_budget=s)
    one = toy_engine.generate(PROMPTS, budget, GREEDY, mode="single-pass")
    two = toy_engine.generate(PROMPTS, budget, GREEDY, mode="two-call")
    assert [c.completion_ids for c in one] == [c.completion_ids for c in two]
    assert [c.sampled_mask for c in one] == [c.sampled_mask for c in two]
    for a, b in zip(one, two):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4, nan_ok=True)
        assert (a.thinking_tokens, a.solution_tokens, a.finish_reason) == (b.thinking_tokens, b.solution_tokens, b.finish_reason)


def test_same_seed_same_tokens_and_other_seed_other_tokens(toy_engine):
    budget = BudgetConfig(thinking_budget=10, solution_budget=6)
    run = lambda seed: [c.completion_ids for c in toy_engine.generate(PROMPTS, budget, SamplingConfig(temperature=1.0, seed=seed), num_samples=3)]  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_batch_size_limit_and_left_padding_do_not_change_greedy_tokens(toy_engine):
    budget = BudgetConfig(thinking_budget=8, solution_budget=5)
    batched = toy_engine.generate(PROMPTS, budget, GREEDY)
    toy_engine.max_batch_size = 1
    try:
        alone = toy_engine.generate(PROMPTS, budget, GREEDY)
    finally:
        toy_engine.max_batch_size = 64
    assert [c.completion_ids for c in batched] == [c.completion_ids for c in alone]


@pytest.mark.parametrize("sampling", [GREEDY, SamplingConfig(temperature=0.8, top_p=1.0, seed=5),
                                      SamplingConfig(temperature=0.6, top_p=0.95, top_k=40, seed=5)],
                         ids=["greedy", "T=0.8", "T=0.6,top-p,top-k"])
def test_logprobs_are_the_sampling_distributions_and_nan_for_forced_tokens(toy_engine, sampling):
    """Recompute every completion token's log-prob with one full forward pass over prompt + completion: a sampled
    token's is its log-prob under the filtered distribution it was drawn from, a forced token's is NaN."""
    from elastic_reasoning.generation.sampling import filtered_scores

    c = toy_engine.generate(["Add 12 and 30."], BudgetConfig(thinking_budget=6, solution_budget=5), sampling)[0]
    assert 0 in c.sampled_mask  # the cut forced a token
    assert c.logprobs_kind == "sampling"
    ids = torch.tensor([c.prompt_ids + c.completion_ids])
    with torch.no_grad():
        logits = toy_engine.model(ids).logits[0, len(c.prompt_ids) - 1 : -1]  # (N, V): predicts each completion token
    expected = torch.log_softmax(filtered_scores(logits, sampling), -1).gather(
        1, torch.tensor(c.completion_ids)[:, None]).squeeze(1)
    for got, want, sampled in zip(c.logprobs, expected.tolist(), c.sampled_mask):
        if sampled:
            assert got == pytest.approx(want, abs=1e-4)
        else:
            assert got != got


def test_prompt_is_rendered_with_the_chat_template_and_opens_thinking(toy_engine):
    c = toy_engine.generate(["What is 3+4?"], BudgetConfig(thinking_budget=1, solution_budget=1), GREEDY)[0]
    text = toy_engine.tokenizer.decode(c.prompt_ids)
    assert text.startswith("<|user|>") and text.rstrip().endswith("<|assistant|> <think>")
    assert text.count("<think>") == 1


def test_prompt_without_thinking_in_template_gets_it_opened(toy_engine):
    messages = [{"role": "user", "content": "What is 3+4?"}]
    rendered = toy_engine.render(messages, BudgetConfig(start_thinking="<think>"))
    assert rendered[-1] == toy_engine.tokenizer.convert_tokens_to_ids("<think>")
    tpl, toy_engine.tokenizer.chat_template = toy_engine.tokenizer.chat_template, None
    try:
        raw = toy_engine.render("What is 3+4?", BudgetConfig())
    finally:
        toy_engine.tokenizer.chat_template = tpl
    assert raw[-1] == toy_engine.tokenizer.convert_tokens_to_ids("<think>")


def test_end_thinking_text_the_tokenizer_cannot_encode_is_a_clear_error(toy_engine):
    with pytest.raises(TokenizerError, match="cannot encode"):
        toy_engine.generate(["What is 3+4?"], BudgetConfig(end_thinking="<|reasoning_end|>"), GREEDY)


def test_multi_token_end_of_thinking_on_the_toy_model(toy_engine):
    """'check ok' is two tokens on the toy tokenizer: forced whole at a cut, matched when sampled."""
    budget = BudgetConfig(thinking_budget=5, solution_budget=3, end_thinking="check ok")
    ids = toy_engine.tokenizer.encode("check ok", add_special_tokens=False)
    assert len(ids) == 2
    for c in toy_engine.generate(PROMPTS, budget, SamplingConfig(temperature=1.0, seed=1), num_samples=4):
        assert c.thinking_tokens <= 5 and c.solution_tokens <= 3
        start = c.end_thinking_index
        assert c.completion_ids[start : start + 2] == ids and c.solution_index == start + 2


def test_continue_ids_in_solution_phase_matches_the_second_half_of_one_pass(toy_engine):
    """What shared-thinking sweeps rely on: a solution generated after a given thinking prefix."""
    budget = BudgetConfig(thinking_budget=6, solution_budget=5)
    full = toy_engine.generate(PROMPTS, budget, GREEDY)
    prefixes = [c.prompt_ids + c.completion_ids[: c.solution_index] for c in full]
    from elastic_reasoning.budget import Phase

    solutions = toy_engine.continue_ids(prefixes, budget, GREEDY, phase=Phase.SOLUTION)
    for c, sol in zip(full, solutions):
        assert sol.completion_ids == c.completion_ids[c.solution_index :]
        assert sol.solution_tokens == c.solution_tokens and sol.thinking_tokens == 0


@pytest.mark.parametrize("mode", ["single-pass", "two-call"])
def test_answer_prefix_starts_the_solution_after_a_cut(scripted_engine, mode):
    w = scripted_engine.words
    c = scripted_engine.generate(["What is 3+4?"], BudgetConfig(thinking_budget=2, solution_budget=2, answer_prefix="answer :"),
                                 GREEDY, mode=mode)[0]
    prefix = scripted_engine.tokenizer.encode("answer :", add_special_tokens=False)
    assert c.completion_ids[:3] == w["thinking"][:2] + [w["end"]]
    assert c.completion_ids[3:5] == prefix and c.solution_index == 3 and c.solution.startswith("answer :")
    assert c.sampled_mask[:5] == [1, 1, 0, 0, 0] and c.solution_tokens == 2


def test_per_prompt_budgets_share_one_batch(scripted_engine):
    budgets = [BudgetConfig(thinking_budget=2, solution_budget=1), BudgetConfig(thinking_budget=9, solution_budget=9),
               BudgetConfig(thinking_budget=0, solution_budget=3)]
    out = scripted_engine.generate(PROMPTS, budgets, GREEDY)
    assert [(c.thinking_tokens, c.solution_tokens) for c in out] == [(2, 1), (5, 5), (0, 3)]
    assert [c.thinking_truncated for c in out] == [True, False, True]


def test_on_token_streams_every_token_in_order(toy_engine):
    seen: dict[int, list] = {}
    out = toy_engine.generate(PROMPTS[:2], BudgetConfig(thinking_budget=5, solution_budget=4), SamplingConfig(seed=2),
                              num_samples=2, on_token=lambda job, tok, forced: seen.setdefault(job, []).append((tok, forced)))
    for job, c in enumerate(out):
        assert seen[job] == [(t, m == 0) for t, m in zip(c.completion_ids, c.sampled_mask)]


def test_a_cancelled_job_stops_and_frees_its_slot(toy_engine):
    steps: dict[int, int] = {}

    def on_token(job, tok, forced):
        steps[job] = steps.get(job, 0) + 1

    out = toy_engine.generate(PROMPTS, BudgetConfig(thinking_budget=30, solution_budget=30), SamplingConfig(seed=2),
                              on_token=on_token, is_cancelled=lambda job: job == 1 and steps.get(1, 0) >= 3)
    assert out[1].finish_reason == "abort" and out[1].total_tokens == 3
    assert out[0].total_tokens > 3 and out[2].total_tokens > 3
    assert len(out[1].completion_ids) == len(out[1].sampled_mask) == len(out[1].logprobs)
