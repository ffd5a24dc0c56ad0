"""Scale-out with vLLM's server mode (`trainer.vllm_mode: server`), through the trainer, on two processes
(`accelerate launch --num_processes 2`, gloo) against a real `vllm serve` of this environment on loopback.

TRL keeps its client on the main process only: every process's prompts are gathered there, generated with the budgets
in `vllm_xargs`, and the completions, masks and log-probs go back to their ranks. Every rank's completions keep
t*/s*, forced tokens are masked with NaN log-probs, the logged metrics cover both ranks, the first step sends what a
one-process run with the same global batch sends, and the weights the trainer pushes each step reach the server (on
this CPU through the server's in-place reload: train.py `use_disk_reload`). A launch whose server cannot be reached
stops at start-up with one message on every process and writes nothing."""

from __future__ import annotations

import math

import pytest

from ..distributed_checks import check_run, check_same_first_step, child_env, free_port, launch, rollouts
from .serving import vllm_serve

SERVER_MODE = ["--rollout.engine", "vllm", "--vllm_mode", "server", "--vllm_server_timeout", "120"]


@pytest.fixture(scope="module")
def untied_toy(toy_dir, tmp_path_factory):
    """The toy model with its own output layer: without a GPU the weights reach the server through vLLM's in-place
    reload, which cannot refresh a tied one on the CPU build (train.py refuses a tied model there)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("untied") / "toy"
    model = AutoModelForCausalLM.from_pretrained(str(toy_dir), dtype=torch.float32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(toy_dir)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vllm_server(untied_toy, tmp_path_factory):
    with vllm_serve(untied_toy, tmp_path_factory.mktemp("vllm-serve") / "server.log") as url:
        yield url


def vllm_env() -> dict:
    return child_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="WARNING")


def greedy_logprobs(engine, prompts) -> list[float]:
    """The log-probs of the first three sampled tokens of each prompt's greedy completion."""
    from elastic_reasoning.budget import BudgetConfig
    from elastic_reasoning.generation.record import SamplingConfig

    out = engine.generate(prompts, BudgetConfig(thinking_budget=4, solution_budget=2), SamplingConfig(temperature=0))
    return [lp for c in out for lp in [lp for lp, m in zip(c.logprobs, c.sampled_mask) if m][:3]]


@pytest.mark.distributed
def test_two_processes_vllm_server_mode(vllm_server, untied_toy, tmp_path):
    # an entropy bonus moves the weights even when every reward of the random toy model is 0 (no advantage)
    server_run = [*SERVER_MODE, "--vllm_server_base_url", vllm_server, "--entropy_coef", "1.0",
                  "--learning_rate", "0.02"]
    two = launch(tmp_path / "two", untied_toy, 2, *server_run, "--save_strategy", "steps", "--save_steps", "1",
                 env=vllm_env())
    assert two.returncode == 0, two.stderr[-4000:]
    many = check_run(tmp_path / "two", 2, engine="vllm-server")

    # The weight sync reached the server: it now holds what the trainer pushed before step 2's rollout, i.e. the
    # weights of checkpoint-1, not the initial ones (greedy log-probs of the same tokens, float32 on both sides).
    from trl.generation.vllm_client import VLLMClient

    from elastic_reasoning.generation.transformers_engine import TransformersEngine
    from elastic_reasoning.generation.vllm_server_engine import VLLMServerEngine

    prompts = ["what is the sum of 1 2 3 ?", "what is 4 + 5 ?"]
    initial = TransformersEngine.from_pretrained(str(untied_toy), device="cpu")
    synced = TransformersEngine.from_pretrained(str(tmp_path / "two" / "run" / "checkpoint-1"), device="cpu")
    server = VLLMServerEngine(VLLMClient(base_url=vllm_server, connection_timeout=30), initial.tokenizer)
    on_server, on_synced, on_initial = (greedy_logprobs(e, prompts) for e in (server, synced, initial))
    assert on_server == pytest.approx(on_synced, abs=2e-3)
    assert max(abs(a - b) for a, b in zip(on_synced, on_initial)) > 1e-2  # the weights did move

    one = launch(tmp_path / "one", untied_toy, 1, *server_run, "--max_steps", "1", env=vllm_env())
    assert one.returncode == 0, one.stderr[-4000:]
    single = check_run(tmp_path / "one", 1, engine="vllm-server", steps=1)
    check_same_first_step(many, single, 2)
    # The main process sends the same requests with the same seeds whatever the number of processes (one slot per
    # request group), so the server returns the same completions.
    assert ([ids for r in range(2) for ids in many[(0, r)]["completion_ids"]] == single[(0, 0)]["completion_ids"])
    for row in many.values():  # vLLM's processed log-probs of the sampled tokens
        assert any(not math.isnan(lp) for lps in row["logprobs"] for lp in lps)


@pytest.mark.distributed
def test_server_mode_without_a_server_stops_every_process_at_start_up(toy_dir, tmp_path):
    nowhere = f"http://127.0.0.1:{free_port()}"
    r = launch(tmp_path, toy_dir, 2, "--rollout.engine", "vllm", "--vllm_mode", "server", "--vllm_server_base_url",
               nowhere, "--vllm_server_timeout", "1", env=vllm_env(), timeout=600)
    assert r.returncode != 0
    message = f"elastic-reasoning: error: vllm_mode server: no vLLM server answers at {nowhere}"
    assert r.stderr.count(message) == 2, r.stderr[-4000:]  # one clear message, on each of the two processes
    assert "elastic_reasoning/" not in r.stderr, r.stderr[-4000:]  # no traceback through our code (the launcher's own
    # report of its failed children is all there is besides the message)
    assert not (tmp_path / "run").exists() and not list((tmp_path / "rollouts").glob("*"))


def _build(toy_dir, out, *overrides):
    from elastic_reasoning.training.config import load_config
    from elastic_reasoning.training.train import build_trainer

    from ..distributed_checks import TOY_RECIPE

    return build_trainer(load_config(TOY_RECIPE, ["--model.name_or_path", str(toy_dir), "--output_dir", str(out),
                                                  "--rollout.engine", "vllm", *overrides]))


def test_budgets_beyond_the_servers_context_stop_the_launch(vllm_server, untied_toy, toy_dir, tmp_path):
    from elastic_reasoning.training.config import ConfigError

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"thinking \+ solution budget = 600 tokens per completion does not fit in "
                                          r"the server's max_model_len \(http://127.0.0.1:\d+\) = 512"):
        _build(untied_toy, out, "--vllm_mode", "server", "--vllm_server_base_url", vllm_server,
               "--thinking_budget", "400", "--solution_budget", "200", "--max_completion_length", "600")
    with pytest.raises(ConfigError, match="max_completion_length .the vanilla cap. = 600 tokens"):
        _build(untied_toy, out, "--vllm_mode", "server", "--vllm_server_base_url", vllm_server,
               "--rollout.mode", "vanilla", "--max_completion_length", "600")
    with pytest.raises(ConfigError, match="tied output layer"):  # the CPU reload cannot refresh a tied lm_head
        _build(toy_dir, out, "--vllm_mode", "server", "--vllm_server_base_url", vllm_server)
    assert not out.exists()


def test_colocate_with_a_tensor_parallel_size_that_does_not_divide_the_processes_stops_the_launch(toy_dir, tmp_path):
    from elastic_reasoning.training.config import ConfigError

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="vllm_tensor_parallel_size 2 does not divide the 1 processes"):
        _build(toy_dir, out, "--vllm_tensor_parallel_size", "2")
    assert not out.exists()
