"""The budget logits processor, driven directly the way vLLM drives it (update_state then apply, per step).

Exact checks of what each phase does to a row of logits: what the processor writes, divided by the temperature as
vLLM's sampler does next, must be the log of the transformers engine's distribution (``filtered_scores`` and the
EOS rule). The engine and distribution tests check the same inside a running vLLM."""

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


class Params(SimpleNamespace):
    """Stands for vLLM's SamplingParams (weakly referenceable, as they are)."""


def params(extra_args=None, temperature=1.0, seed=None, top_p=1.0, top_k=0):
    return Params(extra_args=extra_args, temperature=temperature, eos_token_id=EOS,
                           all_stop_token_ids={EOS}, seed=seed, top_p=top_p, top_k=top_k)


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


def expected_logd(raw: torch.Tensor, temperature: float, top_p: float, top_k: int, rule: str | None,
                  target: int = END) -> torch.Tensor:
    """The transformers engine's distribution of the *emitted* token, written independently of the processor: its
    sampler's ``filtered_scores``, then a drawn EOS replaced by ``target`` (end_thinking) or EOS banned (suppress)."""
    from elastic_reasoning.generation.record import SamplingConfig
    from elastic_reasoning.generation.sampling import filtered_scores

    banned = (torch.tensor([[0]]), torch.tensor([[EOS]])) if rule == "suppress" else None
    probs = filtered_scores(raw[None].clone(), SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k),
                            banned).softmax(-1)[0].double()
    if rule == "end_thinking":
        probs[target] += probs[EOS]
        probs[EOS] = 0.0
    return probs.log()


def eos_heavy_logits() -> torch.Tensor:
    """Logits where EOS and the end of thinking both matter and top-p has a real boundary."""
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3)) * 2
    logits[:, EOS] = 4.0
    logits[:, END] = 3.5
    logits[:, 9] = 4.2
    return logits


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.6, 0.95, 0), (0.6, 0.9, 40), (1.7, 0.5, 0),
                                                     (0.3, 1.0, 5)])
@pytest.mark.parametrize("rule", ["end_thinking", "suppress", "stop", "solution"])
def test_written_logits_are_the_transformers_engines_distribution(processor, temperature, top_p, top_k, rule):
    from elastic_reasoning.generation.record import SamplingConfig
    from elastic_reasoning.generation.vllm_args import budget_extra_args, vllm_sampling_kwargs
    from elastic_reasoning.budget import BudgetConfig, Phase

    sampling = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k)
    budget = BudgetConfig(thinking_budget=50, solution_budget=50,
                          eos_in_thinking="end_thinking" if rule == "solution" else rule)
    extra = budget_extra_args(budget, phase=Phase.SOLUTION if rule == "solution" else Phase.THINKING,
                              sampling=sampling)
    kwargs = vllm_sampling_kwargs(sampling)
    assert kwargs == {"temperature": temperature, "top_p": 1.0, "top_k": 0}  # vLLM filters nothing itself
    add(processor, (0, params(extra, **kwargs), []))
    processor.update_state(None)
    raw = eos_heavy_logits()
    out = processor.apply(raw.clone())
    vllm_view = torch.log_softmax(out[0] / temperature, dim=-1).double()  # vLLM's sampler: divide by T, sample
    want = expected_logd(raw[0], temperature, top_p, top_k, None if rule in ("stop", "solution") else rule)
    assert torch.equal(torch.isfinite(vllm_view), torch.isfinite(want))
    finite = torch.isfinite(want)
    assert torch.allclose(vllm_view[finite], want[finite], atol=1e-5)  # vLLM's processed log-probs, too


def test_eos_mass_moves_in_the_temperature_scaled_domain_when_vllm_filters_itself(processor):
    """A raw client with top_p in SamplingParams (not in the extra args): the processor does not filter; it merges
    EOS into the end of thinking at the request's temperature and lets vLLM apply top-p afterwards."""
    add(processor, (0, params({"thinking_budget": 50}, temperature=0.6, top_p=0.9), []))
    processor.update_state(None)
    raw = eos_heavy_logits()
    out = processor.apply(raw.clone())
    want = expected_logd(raw[0], 0.6, 1.0, 0, "end_thinking")
    assert torch.allclose(torch.log_softmax(out[0] / 0.6, dim=-1).double(), want, atol=1e-5)


def test_greedy_eos_argmax_forces_the_end_of_thinking_otherwise_nothing_changes(processor):
    add(processor, (0, params({"thinking_budget": 50}, temperature=0.0), []),
        (1, params({"thinking_budget": 50}, temperature=0.0), []))
    processor.update_state(None)
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    logits[0, EOS] = 5.0  # EOS is the argmax of row 0
    logits[1, 9] = 5.0  # token 9 is the argmax of row 1
    logits[1, EOS] = 4.0
    before = logits.clone()
    out = processor.apply(logits)
    assert out[0].argmax().item() == END and out[0, EOS] == -float("inf")
    # vLLM's greedy log-prob of the end of thinking: the mass of both, as the transformers engine's emitted token
    merged = torch.logaddexp(before[0, END], before[0, EOS]) - torch.logsumexp(before[0], dim=0)
    assert torch.log_softmax(out[0], dim=0)[END].item() == pytest.approx(merged.item(), abs=1e-6)
    assert torch.equal(out[1], before[1])  # EOS is not the argmax: never picked, and the log-probs stay plain


@pytest.mark.parametrize("rule", ["suppress", "stop"])
def test_other_eos_rules_under_greedy(processor, rule):
    add(processor, (0, params({"thinking_budget": 50, "eos_in_thinking": rule}, temperature=0.0), []))
    before, logits = step(processor)
    if rule == "suppress":
        assert logits[0, EOS] == -float("inf") and logits[0, END] == before[0, END]
    else:
        assert torch.equal(before[0], logits[0])


def multi(processor, eos_logit: float, *, temperature=1.0, seed=None):
    """A thinking request with a three-token end of thinking, one step taken with EOS at ``eos_logit``; returns its
    output list (append the drawn token, then step again)."""
    out: list[int] = []
    add(processor, (0, params({"thinking_budget": 50, "end_thinking_ids": [60, 61, 62]}, temperature=temperature,
                              seed=seed), out))
    processor.update_state(None)
    logits = torch.zeros(4, VOCAB)
    logits[0, EOS] = eos_logit
    written = processor.apply(logits)
    return out, written


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_multi_token_end_after_an_eos_is_forced_whole(processor, temperature):
    out, written = multi(processor, 40.0, temperature=temperature)  # EOS takes all the mass
    assert written[0, EOS] == -float("inf") and written[0].argmax().item() == 60
    out.append(60)  # vLLM draws the first end-of-thinking token, in place of the EOS
    _, logits = step(processor)
    assert only(logits[0]) == 61  # ... and the rest is forced, as the transformers engine forces it
    out.append(61)
    _, logits = step(processor)
    assert only(logits[0]) == 62
    out.append(62)
    before, logits = step(processor)
    assert only(logits[0]) is None and processor.rows[0].row.phase.name == "SOLUTION"


def test_state_survives_leaving_the_batch_and_coming_back(processor):
    """vLLM removes a request it does not schedule for a step (or preempts) and adds it back later with the same
    SamplingParams object and its tokens: the EOS-path decision made before is kept."""
    from vllm.v1.sample.logits_processor import BatchUpdate

    out: list[int] = []
    request = params({"thinking_budget": 50, "end_thinking_ids": [60, 61, 62]})
    add(processor, (0, request, out))
    processor.update_state(None)
    logits = torch.zeros(4, VOCAB)
    logits[0, EOS] = 40.0
    processor.apply(logits)
    out.append(60)  # drawn in place of the EOS
    processor.update_state(BatchUpdate(batch_size=8, removed=[0], added=[], moved=[]))
    assert not processor.rows
    processor.update_state(BatchUpdate(batch_size=8, removed=[], added=[(2, request, [7, 8], list(out))], moved=[]))
    _, logits = step(processor)
    assert only(logits[2]) == 61  # still forcing the rest of the end of thinking
    # a different request with the same arguments starts afresh
    add(processor, (1, params({"thinking_budget": 50, "end_thinking_ids": [60, 61, 62]}), [60]))
    _, logits = step(processor)
    assert only(logits[1]) is None


def test_multi_token_end_written_by_the_model_is_not_forced(processor):
    out, _ = multi(processor, -float("inf"))  # no EOS mass: a drawn 60 is the model's own
    out.append(60)
    _, logits = step(processor)
    assert only(logits[0]) is None  # the model writes on freely (61 is likely nowhere near forced)


def test_the_coin_is_seeded_per_request(toy_dir):
    """Same seed, same coin: P(EOS | 60 drawn) = 1/2 here, and two processors decide alike over many requests."""
    from elastic_reasoning.generation.vllm_processor import ElasticBudgetLogitsProcessor

    def decisions(seed):
        made = []
        for k in range(24):
            config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(toy_dir), model=str(toy_dir),
                                                                  trust_remote_code=False))
            proc = ElasticBudgetLogitsProcessor(config, torch.device("cpu"), False)
            out, _ = multi(proc, 0.0, seed=seed * 100 + k)  # EOS and 60 both at logit 0: odds 1/2
            out.append(60)
            _, logits = step(proc)
            made.append(only(logits[0]) == 61)
        return made

    a, b = decisions(1), decisions(1)
    assert a == b and 0 < sum(a) < len(a)
    assert decisions(2) != a

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
                                 {"thinking_budget": 4, "budget_phase": "later"},
                                 {"thinking_budget": 4, "sampling_top_p": 0},
                                 {"thinking_budget": 4, "sampling_top_p": "x"},
                                 {"thinking_budget": 4, "sampling_top_k": -2}, {"sampling_top_p": 0.9}])
def test_bad_arguments_are_refused(bad):
    from elastic_reasoning.generation.vllm_processor import ElasticBudgetLogitsProcessor

    with pytest.raises(ValueError):
        ElasticBudgetLogitsProcessor.validate_params(SimpleNamespace(extra_args=bad, top_p=1.0, top_k=0))


@pytest.mark.parametrize("top_p,top_k", [(0.9, 0), (1.0, 5)])
def test_filters_given_twice_are_refused(top_p, top_k):
    from elastic_reasoning.generation.vllm_processor import ElasticBudgetLogitsProcessor

    with pytest.raises(ValueError, match="filter twice"):
        ElasticBudgetLogitsProcessor.validate_params(SimpleNamespace(
            extra_args={"thinking_budget": 4, "sampling_top_p": 0.9}, top_p=top_p, top_k=top_k))
    # in SamplingParams only (a raw vllm serve client): accepted, see the approximate path above
    ElasticBudgetLogitsProcessor.validate_params(SimpleNamespace(extra_args={"thinking_budget": 4}, top_p=top_p,
                                                                 top_k=top_k))


def test_loaded_twice_acts_once(toy_dir):
    """The entry point and --logits-processors both loaded: vLLM builds two instances with one config."""
    from elastic_reasoning.generation.vllm_processor import ElasticBudgetLogitsProcessor

    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(toy_dir), model=str(toy_dir),
                                                          trust_remote_code=False))
    first = ElasticBudgetLogitsProcessor(config, torch.device("cpu"), False)
    second = ElasticBudgetLogitsProcessor(config, torch.device("cpu"), False)
    extra = {"thinking_budget": 50, "sampling_top_p": 0.9}
    for proc in (first, second):
        add(proc, (0, params(extra, temperature=0.6), []))
        proc.update_state(None)
    raw = eos_heavy_logits()
    out = second.apply(first.apply(raw.clone()))
    want = expected_logd(raw[0], 0.6, 0.9, 0, "end_thinking")
    finite = torch.isfinite(want)
    assert torch.allclose(torch.log_softmax(out[0] / 0.6, -1).double()[finite], want[finite], atol=1e-5)


def test_string_arguments_from_http_are_accepted():
    from elastic_reasoning.generation.vllm_args import parse_budget_args

    parsed = parse_budget_args({"thinking_budget": "16", "solution_budget": 8, "stop_after_thinking": "true",
                                "sampling_top_p": "0.95", "sampling_top_k": "20"})
    assert parsed.config.thinking_budget == 16 and parsed.config.solution_budget == 8 and parsed.stop_after_thinking
    assert parsed.top_p == 0.95 and parsed.top_k == 20
