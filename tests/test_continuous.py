"""Continuous batching in the transformers engine (generation/continuous.py): rows join and leave between steps and
still decode exactly what the one-pass engine decodes (greedy: the same tokens; seeded: the same tokens as a batch
of one), every row keeps its budgets and its record, a cancelled row leaves at the next step, and a short request
that joins beside a long one finishes first."""

from __future__ import annotations

import math

import pytest
import torch

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.generation.continuous import DecodeRequest, draw_per_row
from elastic_reasoning.generation.record import SamplingConfig
from elastic_reasoning.generation.sampling import filtered_scores, sample

GREEDY = SamplingConfig(temperature=0.0)
PROMPTS = [f"What is {i} + {3 * i + 7}?" + " and" * (i % 5) for i in range(10)]
BUDGETS = [BudgetConfig(thinking_budget=(3, 8, 20, 40)[i % 4], solution_budget=(2, 6, 12)[i % 3]) for i in range(10)]


def requests(engine, sampling=GREEDY, prompts=PROMPTS, budgets=BUDGETS):
    return [DecodeRequest(engine.render(p, b), b, sampling, prompt_index=k)
            for k, (p, b) in enumerate(zip(prompts, budgets))]


@pytest.mark.parametrize("max_rows, prefill_chunk", [(1, 512), (3, 4), (16, 512)])
def test_greedy_rows_decode_what_generate_decodes_whatever_joins_around_them(toy_engine, max_rows, prefill_chunk):
    offline = toy_engine.generate(PROMPTS, BUDGETS, GREEDY)
    decoder = toy_engine.continuous_decoder(max_rows=max_rows, prefill_chunk=prefill_chunk)
    online = decoder.run(requests(toy_engine))
    for a, b in zip(offline, online):
        assert b.completion_ids == a.completion_ids
        assert b.sampled_mask == a.sampled_mask
        assert (b.thinking_tokens, b.solution_tokens, b.finish_reason, b.thinking_end) == \
            (a.thinking_tokens, a.solution_tokens, a.finish_reason, a.thinking_end)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4, nan_ok=True)
    assert decoder.rows == 0 and decoder.waiting == 0


def test_a_seeded_row_gets_the_tokens_of_a_batch_of_one_beside_unseeded_rows(toy_engine):
    seeded = SamplingConfig(temperature=1.0, top_p=0.9, top_k=50, seed=5)
    alone = toy_engine.generate(PROMPTS[:1], BUDGETS[:1], seeded)[0]
    others = requests(toy_engine, SamplingConfig(temperature=0.7), PROMPTS[1:6], BUDGETS[1:6])
    decoder = toy_engine.continuous_decoder(max_rows=4)
    shared = decoder.run([DecodeRequest(toy_engine.render(PROMPTS[0], BUDGETS[0]), BUDGETS[0], seeded)] + others)
    assert shared[0].completion_ids == alone.completion_ids
    assert shared[0].sampled_mask == alone.sampled_mask


def test_draw_per_row_is_sample_row_by_row_with_each_rows_generator():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    logits[2, 10:] = float("-inf")  # zero-probability tokens are never drawn
    for sampling in (SamplingConfig(temperature=1.0, top_p=1.0), SamplingConfig(temperature=0.6, top_p=0.9, top_k=7)):
        gens = [torch.Generator().manual_seed(100 + b) for b in range(6)]
        probs = torch.softmax(filtered_scores(logits, sampling), dim=-1)
        together = draw_per_row(probs, gens)
        gens = [torch.Generator().manual_seed(100 + b) for b in range(6)]
        apart = torch.cat([sample(logits[b : b + 1], sampling, gens[b])[0] for b in range(6)])
        assert together.tolist() == apart.tolist()


def test_every_row_keeps_its_budgets_and_a_consistent_record(toy_engine):
    decoder = toy_engine.continuous_decoder(max_rows=4, prefill_chunk=5)
    out = decoder.run(requests(toy_engine, SamplingConfig(temperature=1.0, seed=3)))
    for c, b in zip(out, BUDGETS):
        assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
        assert c.thinking_tokens <= b.thinking_budget and c.solution_tokens <= b.solution_budget
        for m, lp in zip(c.sampled_mask, c.logprobs):
            assert (m == 0 and math.isnan(lp)) or (m == 1 and math.isfinite(lp) and lp <= 0)
        assert c.thinking_ended and c.completion_ids.count(toy_engine.tokenizer.convert_tokens_to_ids("</think>")) == 1


def test_a_cancelled_row_leaves_at_the_next_step_and_the_others_finish(toy_engine):
    long = BudgetConfig(thinking_budget=200, solution_budget=50)
    cancel = {"now": False}
    done = {}
    reqs = [DecodeRequest(toy_engine.render(PROMPTS[k], long), long, GREEDY, prompt_index=k,
                          is_cancelled=(lambda: cancel["now"]) if k == 0 else None,
                          on_done=lambda c, k=k: done.setdefault(k, c)) for k in range(3)]
    decoder = toy_engine.continuous_decoder(max_rows=3)
    for r in reqs:
        decoder.add(r)
    for _ in range(5):
        decoder.step()
    assert decoder.rows == 3 and not done
    cancel["now"] = True
    decoder.step()
    assert decoder.rows == 2 and done[0].finish_reason == "abort"
    while decoder.busy:
        decoder.step()
    assert done[1].finish_reason != "abort" and done[2].finish_reason != "abort"


def test_a_short_request_joining_beside_a_long_one_finishes_first(toy_engine):
    long, short = BudgetConfig(thinking_budget=120, solution_budget=40), BudgetConfig(thinking_budget=2,
                                                                                         solution_budget=2)
    order = []
    decoder = toy_engine.continuous_decoder(max_rows=2)
    decoder.add(DecodeRequest(toy_engine.render(PROMPTS[0], long), long, GREEDY, on_done=lambda c: order.append("long")))
    for _ in range(10):
        decoder.step()
    decoder.add(DecodeRequest(toy_engine.render(PROMPTS[1], short), short, GREEDY,
                              on_done=lambda c: order.append("short")))
    steps_before = decoder.steps
    while "short" not in order:
        decoder.step()
    assert order == ["short"] and decoder.steps - steps_before <= 8  # it joined the running batch, not a later one
    while decoder.busy:
        decoder.step()
    assert order == ["short", "long"] and decoder.rows == 0


# -- offline generate through the continuous decoder (TransformersEngine(continuous=True), GRPO's rollouts) -------
def _continuous_engine(toy_engine, max_batch_size):
    from elastic_reasoning.generation.transformers_engine import TransformersEngine

    return TransformersEngine(toy_engine.model, toy_engine.tokenizer, max_batch_size=max_batch_size, continuous=True)


@pytest.mark.parametrize("max_batch_size", [3, 64])
def test_continuous_generate_decodes_what_the_static_loop_decodes_under_greedy(toy_engine, max_batch_size):
    engine = _continuous_engine(toy_engine, max_batch_size)
    static = toy_engine.generate(PROMPTS, BUDGETS, GREEDY, num_samples=2)
    flowing = engine.generate(PROMPTS, BUDGETS, GREEDY, num_samples=2)
    assert [(c.prompt_index, c.sample_index) for c in flowing] == [(c.prompt_index, c.sample_index) for c in static]
    for a, b in zip(static, flowing):
        assert (b.completion_ids, b.sampled_mask, b.finish_reason) == (a.completion_ids, a.sampled_mask, a.finish_reason)
        assert b.prompt_ids == a.prompt_ids


def test_continuous_generate_is_reproducible_from_its_seed_and_rows_draw_independently(toy_engine):
    engine = _continuous_engine(toy_engine, 8)
    budget = BudgetConfig(thinking_budget=6, solution_budget=3)
    prompts = [PROMPTS[0]] * 24  # one prompt: rows differ only by their draws
    run = lambda seed: engine.generate(prompts, budget, SamplingConfig(temperature=1.0, top_p=1.0, seed=seed))  # noqa: E731
    first, again, other = run(7), run(7), run(8)
    assert [c.completion_ids for c in first] == [c.completion_ids for c in again]
    assert [c.completion_ids for c in first] != [c.completion_ids for c in other]
    # Rows must not share their uniforms (rows seeded alike would all decode the same tokens).
    assert len({tuple(c.completion_ids) for c in first}) > 12


def test_continuous_generate_draws_from_the_models_distribution(toy_engine):
    """The first token of 600 rows of one prompt against the model's own top-5 softmax: total variation below 0.1
    (about 0.04 expected from 600 draws; rows sharing their uniforms would all draw one token: about 0.7)."""
    engine = _continuous_engine(toy_engine, 200)
    budget = BudgetConfig(thinking_budget=1, solution_budget=0)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=5, seed=3)
    out = engine.generate([PROMPTS[1]], budget, sampling, num_samples=600)
    ids = torch.tensor([toy_engine.render(PROMPTS[1], budget)])
    with torch.no_grad():
        probs = torch.softmax(filtered_scores(toy_engine.model(input_ids=ids).logits[:, -1].float(), sampling), -1)[0]
    counts = torch.bincount(torch.tensor([c.completion_ids[0] for c in out]), minlength=probs.shape[0]).float()
    assert 0.5 * (counts / counts.sum() - probs).abs().sum().item() < 0.1


def test_continuous_generate_streams_and_cancels_by_job(toy_engine):
    engine = _continuous_engine(toy_engine, 4)
    seen: dict[int, list[int]] = {}
    out = engine.generate(PROMPTS[:5], BUDGETS[:5], GREEDY, num_samples=2,
                          on_token=lambda job, token, forced: seen.setdefault(job, []).append(token),
                          is_cancelled=lambda job: job == 3)
    assert out[3].finish_reason == "abort" and out[3].completion_ids == []
    for job, c in enumerate(out):
        if job != 3:
            assert seen[job] == c.completion_ids
