"""vLLM draws each budgeted token from the transformers engine's distribution, at a temperature that is not 1 and
with top-p: statistical tests at controlled states, against the exact distribution computed from the model's logits
with the transformers engine's own functions (``filtered_scores`` and the EOS rule), which the transformers engine's
own samples are checked against too.

The toy model rarely puts mass on EOS, so the states here use a copy of it whose output embeddings of EOS and of
``</think>`` are scaled copies of the most likely token's at the first thinking step: there EOS is the most likely
token and ``</think>`` the third, so moving EOS's mass before the temperature or before top-p (what the processor
used to do) is visibly wrong. Every sampler is seeded: the tests are deterministic.
"""

import math
import shutil

import pytest
import torch

from elastic_reasoning.budget import BudgetConfig, Phase
from elastic_reasoning.generation.record import SamplingConfig

T, TOP_P, N = 0.6, 0.95, 2000
EOS, END = 2, 5
SAMPLING = SamplingConfig(temperature=T, top_p=TOP_P, seed=11)
ONE_STEP = BudgetConfig(thinking_budget=64, solution_budget=64, max_total_tokens=1)
MULTI_END = "finally answer"  # two tokens in the toy tokenizer


@pytest.fixture(scope="session")
def eos_model(toy_dir, tmp_path_factory):
    """(directory, transformers model, tokenizer, state) of the EOS-heavy copy; ``state`` is the rendered prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from elastic_reasoning.generation.prompts import render_prompt

    out = tmp_path_factory.mktemp("eos-heavy") / "model"
    shutil.copytree(toy_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    state = render_prompt(tokenizer, "what is 3 + 4 ?", "<think>")
    with torch.no_grad():
        hot = int(model(torch.tensor([state])).logits[0, -1].argmax())
        weight = model.get_output_embeddings().weight  # tied to the input embeddings: EOS never is an input here
        weight[EOS] = 1.02 * weight[hot]
        weight[END] = 0.97 * weight[hot]
    model.save_pretrained(out)
    return out, model, tokenizer, state


@pytest.fixture(scope="session")  # never dropped before the end: an in-process LLM's teardown ends vLLM's
def eos_vllm(eos_model):  # distributed state for every other LLM of the process
    from elastic_reasoning.generation.vllm_engine import VLLMEngine

    return VLLMEngine.from_pretrained(str(eos_model[0]), dtype="float32", max_model_len=512)


def logits_at(model, prefix) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([list(prefix)])).logits[0, -1].float()


def exact(model, prefix, *, eos_to: int | None) -> torch.Tensor:
    """The transformers engine's distribution of the emitted token after ``prefix`` (float64): its sampler's
    ``filtered_scores`` at (T, top-p), then a drawn EOS replaced by ``eos_to`` (while thinking) or kept."""
    from elastic_reasoning.generation.sampling import filtered_scores

    probs = filtered_scores(logits_at(model, prefix)[None], SAMPLING).softmax(-1)[0].double()
    if eos_to is not None:
        probs[eos_to] += probs[EOS]
        probs[EOS] = 0.0
    return probs


def merged_first(model, prefix) -> torch.Tensor:
    """What the processor did before: EOS's logit merged into the end of thinking at temperature 1, then the
    temperature and top-p. Used only to show that the tests would catch it."""
    from elastic_reasoning.generation.sampling import filtered_scores

    logits = logits_at(model, prefix)
    logits[END] = torch.logaddexp(logits[END], logits[EOS])
    logits[EOS] = -float("inf")
    return filtered_scores(logits[None], SAMPLING).softmax(-1)[0].double()


def chi_square_p(observed: list[int], probs: torch.Tensor) -> float:
    """Pearson's chi-square test of ``observed`` tokens against ``probs``: cells with an expected count >= 5, the
    rest pooled. A token of probability 0 observed at all gives 0."""
    n = len(observed)
    counts = torch.bincount(torch.tensor(observed), minlength=probs.numel()).double()
    if bool(((probs == 0) & (counts > 0)).any()):
        return 0.0
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], (n - counts[big].sum()).reshape(1)])
    exp = torch.cat([expected[big], (n - expected[big].sum()).reshape(1)])
    keep = exp > 1e-9
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def first_tokens(completions) -> list[int]:
    return [c.completion_ids[0] for c in completions]


@pytest.mark.parametrize("where", ["thinking", "solution"])
def test_next_token_distribution_matches_the_transformers_engine(eos_model, eos_vllm, where):
    from elastic_reasoning.generation.transformers_engine import TransformersEngine

    _, model, tokenizer, state = eos_model
    if where == "thinking":  # EOS is the likeliest token, thinking: its mass goes to </think>
        prefix, phase, eos_to = state, Phase.THINKING, END
    else:  # a solution state: EOS stays, the distribution is the plain filtered one
        prefix, phase, eos_to = state + tokenizer.encode("so </think>", add_special_tokens=False), Phase.SOLUTION, None
    want = exact(model, prefix, eos_to=eos_to)
    if where == "thinking":
        assert want[END] > 0.4  # EOS's mass is there (EOS alone has more than any other token)
    ours = eos_vllm.continue_ids([prefix] * N, ONE_STEP, SAMPLING, phase=phase)
    ref = TransformersEngine(model, tokenizer, max_batch_size=N).continue_ids([prefix] * N, ONE_STEP, SAMPLING,
                                                                              phase=phase)
    assert chi_square_p(first_tokens(ref), want) > 1e-3  # the exact distribution is the transformers engine's
    assert chi_square_p(first_tokens(ours), want) > 1e-3  # ... and vLLM's
    if where == "thinking":
        assert chi_square_p(first_tokens(ours), merged_first(model, prefix)) < 1e-3  # the old merge would fail
        assert sum(c.completion_ids[0] == END and c.thinking_end == "eos" for c in ref) > 0.1 * N
    # processed log-probs: log D(token) of the distribution each token was drawn from
    for c in ours:
        assert c.logprobs_kind == "sampling" and c.sampled_mask == [1]
        assert c.logprobs[0] == pytest.approx(math.log(want[c.completion_ids[0]]), abs=1e-4)


def test_multi_token_end_of_thinking_after_an_eos_is_written_whole(eos_model, eos_vllm):
    """A two-token end of thinking: EOS's mass goes to its first token, and after that EOS the second is forced
    (here the first token is outside the nucleus, so every first token drawn stood for an EOS)."""
    _, model, tokenizer, state = eos_model
    end_ids = tokenizer.encode(MULTI_END, add_special_tokens=False)
    assert len(end_ids) == 2
    budget = BudgetConfig(thinking_budget=64, solution_budget=64, end_thinking=MULTI_END, max_total_tokens=2)
    want = exact(model, state, eos_to=end_ids[0])
    assert exact(model, state, eos_to=None)[end_ids[0]] == 0  # the model itself never draws it here
    ours = eos_vllm.continue_ids([state] * N, budget, SAMPLING)
    assert chi_square_p(first_tokens(ours), want) > 1e-3
    after_eos = [c for c in ours if c.completion_ids[0] == end_ids[0]]
    assert len(after_eos) > 0.2 * N
    for c in after_eos:
        assert c.completion_ids == end_ids  # the rest of the sequence follows, always
        assert c.solution_index == 2 and c.thinking_end == "model"  # recorded as the model's own (documented)


def test_eos_then_a_budget_spent_mid_sequence_reads_as_forced(eos_model, eos_vllm):
    """Thinking budget 1, a transition and a two-token end: an end-of-thinking token drawn in place of an EOS cannot
    be the model's own (the budget would then have forced the transition), so the record says what the
    transformers engine's says: both end tokens forced, thinking ended by EOS."""
    from elastic_reasoning.generation.transformers_engine import TransformersEngine

    _, model, tokenizer, state = eos_model
    end_ids = tokenizer.encode(MULTI_END, add_special_tokens=False)
    wait = tokenizer.encode("wait", add_special_tokens=False)
    budget = BudgetConfig(thinking_budget=1, solution_budget=2, end_thinking=MULTI_END, transition="wait")
    q = float(exact(model, state, eos_to=end_ids[0])[end_ids[0]])
    ours = eos_vllm.continue_ids([state] * 400, budget, SAMPLING)
    ref = TransformersEngine(model, tokenizer, max_batch_size=400).continue_ids([state] * 400, budget, SAMPLING)
    for records in (ours, ref):
        eos = [c for c in records if c.thinking_end == "eos"]
        for c in eos:
            assert c.completion_ids[:2] == end_ids and c.sampled_mask[:2] == [0, 0] and not c.thinking_truncated
            assert all(math.isnan(x) for x in c.logprobs[:2]) and c.solution_index == 2
        for c in records:
            if c.thinking_end != "eos":
                assert c.thinking_end == "budget" and c.completion_ids[1:4] == wait + end_ids
                assert c.sampled_mask[:4] == [1, 0, 0, 0]
        assert chi_square_p([int(c.thinking_end == "eos") for c in records],
                            torch.tensor([1 - q, q], dtype=torch.float64)) > 1e-3
