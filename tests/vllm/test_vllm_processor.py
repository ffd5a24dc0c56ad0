"""The budget logits processor, driven directly the way vLLM drives it (update_state then apply, per step).

Exact checks of what each phase does to a row of logits; the engine tests check the same inside a running vLLM."""

from types import SimpleNamespace

import pytest
import torch

END, EOS, VOCAB = 5, 2, 1071  # the toy tokenizer's </think> and </s>


@pytest.fixture()
def processor(toy_dir):
    from elastic_reasoning.generation.vllm_processor import ElasticBudgetLogitsProcessor

    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(toy_dir), model=str(toy_dir),
                                                          trust_remote_code=False))
    return ElasticBudgetLogitsProcessor(config, torch.device("cpu"), False)


def params(extra_args=None, temperature=1.0):
    return SimpleNamespace(extra_args=extra_args, temperature=temperature, eos_token_id=EOS,
                           all_stop_token_ids={EOS})


def add(processor, *requests, removed=(), moved=()):
    from vllm.v1.sample.logits_processor import BatchUpdate

    added = [(index, p, [7, 8], out) for index, p, out in requests]
    processor.update_state(BatchUpdate(batch_size=8, removed=list(removed), added=added, moved=list(moved)))


def step(processor):
    processor.update_state(None)
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    return before, processor.apply(logits)


def only(row: torch.Tensor) -> int | None:
    """The one token left in a row, or None when several are."""
    alive = torch.isfinite(row).nonzero().flatten().tolist()
    return alive[0] if len(alive) == 1 else None


def test_thinking_budget_forces_end_then_solution_budget_stops(processor):
    out: list[int] = []
    add(processor, (1, params({"thinking_budget": 2, "solution_budget": 2}), out))
    _, logits = step(processor)
    assert only(logits[1]) is None  # thinking: the model samples
    out += [30, 31]  # two thinking tokens: the budget is spent
    _, logits = step(processor)
    assert only(logits[1]) == END
    out.append(END)
    before, logits = step(processor)
    assert torch.equal(before[1], logits[1])  # solution: the model samples, EOS allowed
    out += [40, 41]  # s = 2 solution tokens: done
    _, logits = step(processor)
    assert only(logits[1]) == EOS  # the stop token that ends the request (dropped by the engine)


def test_request_without_budget_arguments_is_untouched(processor):
    add(processor, (0, params(None), []), (2, params({"temperature_hint": 1}), []),
        (3, params({"thinking_budget": 0, "solution_budget": 5}), []))
    before, logits = step(processor)
    assert torch.equal(before[0], logits[0]) and torch.equal(before[2], logits[2])
    assert only(logits[3]) == END  # t = 0: the end of thinking comes first


def test_eos_while_thinking_moves_its_mass_to_the_end_of_thinking(processor):
    add(processor, (0, params({"thinking_budget": 50}), []))
    before, logits = step(processor)
    assert logits[0, EOS] == -float("inf")
    assert logits[0, END].item() == pytest.approx(torch.logaddexp(before[0, END], before[0, EOS]).item(), abs=1e-6)
    others = [i for i in range(VOCAB) if i not in (EOS, END)]
    assert torch.equal(before[0, others], logits[0, others])


def test_greedy_eos_argmax_forces_the_end_of_thinking_otherwise_eos_is_removed(processor):
    add(processor, (0, params({"thinking_budget": 50}, temperature=0.0), []),
        (1, params({"thinking_budget": 50}, temperature=0.0), []))
    processor.update_state(None)
    logits = torch.zeros(4, VOCAB)
    logits[0, EOS] = 5.0  # EOS is the argmax of row 0
    logits[1, 9] = 5.0  # token 9 is the argmax of row 1
    logits[1, EOS] = 4.0
    out = processor.apply(logits.clone())
    assert out[0].argmax().item() == END and out[0, EOS] == -float("inf")
    assert out[1].argmax().item() == 9 and out[1, EOS] == -float("inf") and out[1, END] == 0.0


@pytest.mark.parametrize("rule", ["suppress", "stop"])
def test_other_eos_rules(processor, rule):
    add(processor, (0, params({"thinking_budget": 50, "eos_in_thinking": rule}), []))
    before, logits = step(processor)
    if rule == "suppress":
        assert logits[0, EOS] == -float("inf") and logits[0, END] == before[0, END]
    else:
        assert torch.equal(before[0], logits[0])


def test_state_follows_moves_swaps_and_removals(processor):
    from vllm.v1.sample.logits_processor.interface import MoveDirectionality

    a, b = [], []
    add(processor, (0, params({"thinking_budget": 0, "solution_budget": 9}), a),
        (1, params({"thinking_budget": 40}), b))
    _, logits = step(processor)
    assert only(logits[0]) == END and only(logits[1]) is None
    add(processor, moved=[(0, 1, MoveDirectionality.SWAP)])
    _, logits = step(processor)
    assert only(logits[1]) == END and only(logits[0]) is None
    add(processor, moved=[(1, 3, MoveDirectionality.UNIDIRECTIONAL)])
    _, logits = step(processor)
    assert only(logits[3]) == END
    add(processor, removed=[3])
    _, logits = step(processor)
    assert only(logits[3]) is None and set(processor.rows) == {0}


def test_preempted_request_replays_its_tokens(processor):
    out = [30, 31, 32]  # resumed with three thinking tokens already emitted
    add(processor, (0, params({"thinking_budget": 3, "solution_budget": 4}), out))
    _, logits = step(processor)
    assert only(logits[0]) == END


def test_multi_token_end_of_thinking_completes_a_written_prefix(processor):
    out: list[int] = []
    add(processor, (0, params({"thinking_budget": 3, "solution_budget": 4, "end_thinking_ids": [60, 61, 62]}), out))
    out += [30, 60, 61]  # the model wrote two thirds of the sequence when the budget ran out
    _, logits = step(processor)
    assert only(logits[0]) == 62


@pytest.mark.parametrize("bad", [{"thinking_budget": -1}, {"thinking_budget": "x"}, {"solution_budget": 1.5},
                                 {"thinking_budget": 4, "eos_in_thinking": "nope"},
                                 {"thinking_budget": 4, "end_thinking_ids": []},
                                 {"thinking_budget": 4, "budget_phase": "later"}])
def test_bad_arguments_are_refused(bad):
    from elastic_reasoning.generation.vllm_processor import ElasticBudgetLogitsProcessor

    with pytest.raises(ValueError):
        ElasticBudgetLogitsProcessor.validate_params(SimpleNamespace(extra_args=bad))


def test_string_arguments_from_http_are_accepted():
    from elastic_reasoning.generation.vllm_args import parse_budget_args

    parsed = parse_budget_args({"thinking_budget": "16", "solution_budget": 8, "stop_after_thinking": "true"})
    assert parsed.config.thinking_budget == 16 and parsed.config.solution_budget == 8 and parsed.stop_after_thinking
