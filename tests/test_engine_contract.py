"""The engine contract: the distribution is the SamplingConfig's, indices never point past the end, one baseline, no
hidden global state, one engine interface, extreme sampling values handled. (vLLM's side: tests/vllm/.)"""

import json
import math
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_reasoning.budget import BudgetConfig, BudgetRow, BudgetTokens, EosInThinking, Phase
from elastic_reasoning.generation.record import Completion, SamplingConfig

HOSTILE = dict(repetition_penalty=3.0, no_repeat_ngram_size=2, min_new_tokens=7, temperature=0.2, top_k=3,
               do_sample=True, bad_words_ids=[[5]], suppress_tokens=[6, 7], forced_eos_token_id=2)
PROMPTS = ["What is 3+4? Think first.", "Add 12 and 30."]


@pytest.fixture(scope="module")
def hostile_engine(toy_dir, tmp_path_factory):
    from elastic_reasoning.generation.transformers_engine import TransformersEngine

    hostile = tmp_path_factory.mktemp("hostile") / "toy"
    shutil.copytree(toy_dir, hostile)
    path = hostile / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update(HOSTILE)
    path.write_text(json.dumps(config))
    return TransformersEngine.from_pretrained(str(hostile), device="cpu")


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0), SamplingConfig(temperature=0.8, top_p=0.9,
                                                                                      seed=7)], ids=["greedy", "T=0.8"])
def test_a_checkpoints_generation_config_changes_no_token_and_no_logprob(toy_engine, hostile_engine, sampling):
    budget = BudgetConfig(thinking_budget=40, solution_budget=12)
    clean = toy_engine.generate(PROMPTS, budget, sampling, num_samples=3)
    hostile = hostile_engine.generate(PROMPTS, budget, sampling, num_samples=3)
    assert hostile_engine.model.generation_config.repetition_penalty == 3.0  # the checkpoint really carries it
    for a, b in zip(clean, hostile):
        assert a.completion_ids == b.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5, nan_ok=True)
    # the fence restores the model's own config after every call (training saves it with the model)
    assert hostile_engine.model.generation_config.no_repeat_ngram_size == 2


def test_sampling_from_a_checkpoint_is_explicit_and_refuses_what_no_engine_applies():
    ok = SamplingConfig.from_generation_config({"temperature": 0.7, "top_p": 0.8, "top_k": 20, "do_sample": True},
                                               seed=3)
    assert (ok.temperature, ok.top_p, ok.top_k, ok.seed) == (0.7, 0.8, 20, 3)
    assert SamplingConfig.from_generation_config({"do_sample": False, "temperature": 0.7}).greedy
    neutral = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "temperature": 0.6}
    assert SamplingConfig.from_generation_config(neutral).temperature == 0.6
    with pytest.raises(ValueError, match="repetition_penalty=1.05") as err:
        SamplingConfig.from_generation_config({"repetition_penalty": 1.05, "no_repeat_ngram_size": 3})
    assert "no_repeat_ngram_size=3" in str(err.value)


def test_cli_sampling_from_checkpoint(hostile_engine, toy_dir, tmp_path, capsys):
    from elastic_reasoning.cli import main

    folder = tmp_path / "m"
    shutil.copytree(toy_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.5, "top_k": 4, "do_sample": True}))
    assert main(["generate", "--model", str(folder), "--prompt", "hi", "-t", "3", "-s", "2", "--seed", "1",
                 "--sampling-from-checkpoint", "--json"]) == 0
    assert "'temperature': 0.5" in capsys.readouterr().err
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.3}))
    assert main(["generate", "--model", str(folder), "--prompt", "hi", "-t", "3", "-s", "2",
                 "--sampling-from-checkpoint"]) != 0
    assert "repetition_penalty=1.3" in capsys.readouterr().err


# -- indices: a property over random budgets, caps and delimiters -------------------------------------------------
EOS, PAD = 0, 1


@st.composite
def scenarios(draw):
    end = tuple(draw(st.lists(st.integers(10, 13), min_size=1, max_size=3)))
    transition = tuple(draw(st.lists(st.integers(14, 16), max_size=3)))
    answer = tuple(draw(st.lists(st.integers(17, 19), max_size=2)))
    config = BudgetConfig(
        thinking_budget=draw(st.none() | st.integers(0, 12)),
        solution_budget=draw(st.none() | st.integers(0, 8)),
        max_total_tokens=draw(st.none() | st.integers(0, 25)),
        eos_in_thinking=draw(st.sampled_from(list(EosInThinking))),
        transition="x" if transition else "", answer_prefix="y" if answer else "")
    tokens = BudgetTokens(end_thinking_ids=end, transition_ids=transition, eos_ids=frozenset({EOS}), pad_id=PAD,
                          answer_prefix_ids=answer)
    # what the "model" samples: mostly thinking filler, some end-of-thinking pieces, sometimes EOS
    stream = draw(st.lists(st.sampled_from([EOS, 2, 3, 4, *end]), min_size=40, max_size=40))
    return config, tokens, stream


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_indices_stay_inside_the_completion_and_agree_with_the_mask(scenario):
    config, tokens, stream = scenario
    row = BudgetRow(config, tokens)
    ids, mask = [], []
    for sampled in stream:
        if row.done:
            break
        token, forced = row.step(sampled)
        ids.append(token)
        mask.append(0 if forced else 1)
    row.finish_unfinished()
    c = Completion.from_row(row, ids, mask, [math.nan if not m else -0.5 for m in mask], lambda *a, **k: "",
                            prompt_index=0, sample_index=0, prompt_ids=[])  # its own checks run here too
    end = list(tokens.end_thinking_ids)
    e, s, n = c.end_thinking_index, c.solution_index, len(ids)
    if c.thinking_ended:
        assert 0 <= e < s <= n and ids[e:s] == end  # the whole sequence is there, where the indices say
        if c.thinking_truncated:  # forced after the cut; a prefix of it the model wrote itself stays sampled
            assert mask[e:s] == sorted(mask[e:s], reverse=True) and mask[s - 1] == 0
        forced_after = [m for m in mask[s : s + len(tokens.answer_prefix_ids)]]
        if c.thinking_truncated:
            assert all(m == 0 for m in forced_after)
    else:
        assert e is None and s is None
        assert sum(m == 0 for m in mask) == c.forced_tokens
    if config.max_total_tokens is not None:
        assert n <= config.max_total_tokens
    if config.thinking_budget is not None:
        assert c.thinking_tokens <= config.thinking_budget


def test_a_total_cap_that_stops_the_forced_end_of_thinking_leaves_no_index():
    """The probe of the issue: -t 2, a 3-token transition, total cap 3: the cap ends the completion while the
    transition is being forced; no index may point at the end of thinking that was never emitted."""
    tokens = BudgetTokens(end_thinking_ids=(10,), transition_ids=(14, 15, 16), eos_ids=frozenset({EOS}), pad_id=PAD)
    row = BudgetRow(BudgetConfig(thinking_budget=2, solution_budget=5, max_total_tokens=3, transition="x"), tokens)
    ids = [row.step(3)[0] for _ in range(3)]
    assert row.done and ids == [3, 3, 14]
    assert row.end_thinking_index is None and row.solution_index is None
    assert row.thinking_truncated  # thinking was cut; it just never ended inside this completion


def test_cli_cap_during_forcing_reports_no_index(toy_dir, capsys):
    from elastic_reasoning.cli import main

    assert main(["generate", "--model", str(toy_dir), "--prompt", "What is 3+4?", "-t", "2", "-s", "5",
                 "--max-total-tokens", "3", "--transition", "the answer is", "--temperature", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(record["completion_ids"]) == 3
    assert record["end_thinking_index"] is None and record["solution_index"] is None
    assert record["thinking_ended"] is False


# -- one baseline, no hidden global state, one interface -----------------------------------------------------------
def test_truncate_decodes_the_same_in_training_and_evaluation():
    from elastic_reasoning.evaluation.methods import method_points
    from elastic_reasoning.training.config import RolloutConfig
    from elastic_reasoning.training.rollout import budget_for

    train = budget_for(RolloutConfig(mode="truncate", thinking_budget=24, solution_budget=8), 512)
    evaluate = method_points("truncate", [24], 8)[0].config
    assert train == evaluate == BudgetConfig.plain(32)
    assert train.eos_in_thinking == EosInThinking.STOP


def test_generation_without_a_seed_leaves_torchs_global_generator_alone(toy_engine):
    before = torch.random.get_rng_state()
    toy_engine.generate(PROMPTS, BudgetConfig(thinking_budget=4, solution_budget=2), SamplingConfig(temperature=1.0))
    assert torch.equal(before, torch.random.get_rng_state())


def test_derived_seeds_never_collide():
    from elastic_reasoning.generation.seeds import MAX_SEED, derive_seed

    seeds = {derive_seed(11, step=k, process=r, slot=g) for k in range(40) for r in range(8) for g in range(40)}
    assert len(seeds) == 40 * 8 * 40 and all(0 <= x <= MAX_SEED for x in seeds)
    assert derive_seed(11, step=1) != derive_seed(12, step=1)
    with pytest.raises(ValueError, match="process"):
        derive_seed(0, process=1 << 16)


def test_every_engine_implements_the_interface(toy_engine):
    from elastic_reasoning.generation.engine import Engine, PrefixEngine
    from elastic_reasoning.generation.remote_engine import RemoteEngine
    from elastic_reasoning.generation.vllm_engine import VLLMEngine
    from elastic_reasoning.generation.vllm_server_engine import VLLMServerEngine

    assert isinstance(toy_engine, PrefixEngine)
    remote = RemoteEngine("http://127.0.0.1:9", model="m", context_length=64)  # nothing is contacted
    assert isinstance(remote, Engine)
    remote.close()
    assert isinstance(VLLMServerEngine(object(), toy_engine.tokenizer), Engine)
    for name in ("generate", "budget_tokens", "render", "continue_ids", "make_generator"):
        assert callable(getattr(VLLMEngine, name))


def test_load_engine_builds_endpoint_engines_and_names_what_is_missing(toy_dir):
    from elastic_reasoning.generation.engines import load_engine
    from elastic_reasoning.generation.remote_engine import RemoteEngine

    engine = load_engine("m", "remote", endpoint="http://127.0.0.1:9/v1", tokenizer=str(toy_dir), context_length=64)
    assert isinstance(engine, RemoteEngine) and engine.tokenizer is not None
    engine.close()
    with pytest.raises(ValueError, match="endpoint"):
        load_engine("m", "remote")
    with pytest.raises(ValueError, match="unknown backend"):
        load_engine("m", "sglang")


# -- extreme sampling values ----------------------------------------------------------------------------------------
def test_vanishing_temperature_and_top_p_decode_like_greedy(toy_engine):
    budget = BudgetConfig(thinking_budget=6, solution_budget=4)
    greedy = toy_engine.generate(PROMPTS, budget, SamplingConfig(temperature=0))
    tiny_t = toy_engine.generate(PROMPTS, budget, SamplingConfig(temperature=1e-40, seed=1))
    tiny_p = toy_engine.generate(PROMPTS, budget, SamplingConfig(temperature=1.0, top_p=1e-300, seed=1))
    assert [c.completion_ids for c in greedy] == [c.completion_ids for c in tiny_t] == [c.completion_ids for c in tiny_p]
    assert all(not math.isnan(lp) for c in tiny_p for lp, m in zip(c.logprobs, c.sampled_mask) if m)


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"), (dict(seed="x"), "seed"),
])
def test_values_outside_their_domain_are_a_clear_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_solution_continuation_records_start_at_zero(toy_engine):
    prefix = toy_engine.render("Add 12 and 30.", BudgetConfig()) + list(
        toy_engine.budget_tokens(BudgetConfig()).end_thinking_ids)
    c = toy_engine.continue_ids([prefix], BudgetConfig(solution_budget=3), SamplingConfig(temperature=0),
                                phase=Phase.SOLUTION)[0]
    assert c.thinking_ended and c.solution_index == 0 and c.end_thinking_index is None
