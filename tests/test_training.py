"""GRPO on TRL with budget-constrained rollouts, on the tiny model: a few steps each, CPU only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elastic_reasoning.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [{"problem": f"add {a} and {b}", "answer": str(a + b)} for a in range(1, 5) for b in range(1, 5)]


def write_recipe(tmp_path: Path, **rollout) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    recipe = {
        "model": {"name_or_path": "toy"},
        "data": {"dataset": str(data)},
        "rollout": {"mode": "elastic", "thinking_budget": 6, "solution_budget": 4, **rollout},
        "rewards": [{"name": "tests.train_rewards:first_word_is_even_number"}],
        "trainer": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "learning_rate": 0.01,
                    "beta": 0.0, "max_completion_length": 16, "temperature": 1.0, "save_steps": 2, "seed": 3,
                    "output_dir": str(tmp_path / "out")},
    }
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ELASTIC_REASONING_CACHE", str(tmp_path_factory.getbasetemp() / "er-cache"))
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


def build(tmp_path, overrides=(), **rollout):
    from elastic_reasoning.training.train import build_trainer

    return build_trainer(load_config(write_recipe(tmp_path, **rollout), list(overrides)))


def test_a_few_steps_change_the_parameters_and_log_rollout_metrics(tmp_path):
    trainer = build(tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not before[k].equal(after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rollout/thinking_tokens"] <= 6 and r["rollout/solution_tokens"] <= 4
        assert 0 <= r["rollout/cut_fraction"] <= 1 and "reward" in r and "accuracy" in r and "step_time" in r
    assert (tmp_path / "out" / "resolved_config.yaml").exists()


def test_rewards_receive_dataset_columns_and_the_rollout_split(tmp_path):
    from . import train_rewards

    train_rewards.SEEN_COLUMNS.clear()
    trainer = build(tmp_path, ["--max_steps", "1"])
    trainer.train()
    seen = train_rewards.SEEN_COLUMNS[-1]
    assert {"answer", "solution", "thinking_ended", "thinking_truncated", "problem"} <= seen


def _loss_grads_per_completion_token(trainer):
    """One generation batch, and how much gradient TRL's loss sends through each completion token's prediction.

    Measured at the output of the final norm: position p there feeds only the prediction of token p + 1 (TRL scores
    completions through a fused LM head, so the logits themselves are never materialised).
    """
    inputs = [trainer.train_dataset[i] for i in range(4) for _ in range(4)]  # 4 groups: some with unequal rewards
    trainer.model.train()
    batch = trainer._generate_and_score_completions(inputs)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses
    grads = []
    norm = trainer.model.model.norm

    def keep_grad(module, args, out):
        out.register_hook(lambda g: grads.append(g.detach()))  # returns None: the output is left as it is

    handle = norm.register_forward_hook(keep_grad)
    try:
        trainer.compute_loss(trainer.model, batch).backward()
    finally:
        handle.remove()
    width, length = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    per_token = grads[0][:, width - 1 : width - 1 + length].abs().sum(-1)  # (B, C): completion token j
    return batch, per_token


@pytest.mark.parametrize("train_on_forced", [False, True])
def test_forced_tokens_are_masked_out_of_the_loss_unless_asked(tmp_path, train_on_forced):
    trainer = build(tmp_path, ["--train_on_forced_tokens", str(train_on_forced).lower(), "--thinking_budget", "3"])
    batch, per_token = _loss_grads_per_completion_token(trainer)
    valid = batch["completion_mask"] == 1
    env_mask = batch["tool_mask"]
    # which tokens were forced: a cut at t=3 forces </think> at completion index 3 in every row
    end_id = trainer.processing_class.convert_tokens_to_ids("</think>")
    forced = valid & (batch["completion_ids"] == end_id)
    forced[:, :3] = False
    assert forced.any()
    assert per_token[valid & ~forced].max().item() > 0  # the loss does reach the sampled tokens
    if train_on_forced:
        assert bool((env_mask[forced] == 1).all())
        learning = forced & (batch["advantages"] != 0)[:, None]  # rows of a group with equal rewards get no gradient
        assert learning.any() and per_token[learning].min().item() > 0  # trained on, as in the paper's code
    else:
        assert bool((env_mask[forced] == 0).all())
        assert per_token[forced].max().item() == 0.0  # no gradient through forced tokens


@pytest.mark.parametrize("mode", ["vanilla", "truncate"])
def test_baselines_run_with_no_forced_tokens(tmp_path, mode):
    trainer = build(tmp_path, ["--max_steps", "1", "--rollout.mode", mode])
    trainer.train()
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["rollout/forced_tokens"] == 0 and row["rollout/cut_fraction"] == 0


def test_bad_override_and_bad_recipe_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown override"):
        load_config(write_recipe(tmp_path), ["--no_such_knob", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: {mode: sideways}\n")
    with pytest.raises(ConfigError, match="rollout.mode"):
        load_config(bad)


def _train_cmd(recipe, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRL_EXPERIMENTAL_SILENCE="1")
    return [sys.executable, "-m", "elastic_reasoning", "train", "--config", str(recipe), *extra], env


def _metrics(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    recipe = write_recipe(tmp_path)
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ["--max_steps", "6", "--save_steps", "2"]
    cmd, env = _train_cmd(recipe, *common, "--output_dir", str(full))
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    cmd, env = _train_cmd(recipe, *common, "--output_dir", str(cut))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (cut / "checkpoint-2" / "trainer_state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "final").exists(), "the run finished before it could be killed"

    cmd, env = _train_cmd(recipe, *common, "--output_dir", str(cut), "--resume")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    a, b = _metrics(full), _metrics(cut)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing twice
    for step in range(3, 7):
        for key in ("loss", "reward", "rollout/thinking_tokens", "rollout/solution_tokens", "rollout/tokens_generated"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)


def test_two_process_cpu_training_with_accelerate(tmp_path):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "mp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRL_EXPERIMENTAL_SILENCE="1")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "recipes/accelerate/cpu-2proc.yaml"), "-m",
           "elastic_reasoning", "train", "--config", str(recipe), "--output_dir", str(out), "--max_steps", "2",
           "--per_device_train_batch_size", "4"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(out)
    assert sorted(rows) == [1, 2] and (out / "final" / "config.json").exists()


def test_paper_recipes_load_with_the_official_hyperparameters():
    math = load_config(ROOT / "recipes/e1-math-1.5b.yaml")
    assert math.model.name_or_path == "agentica-org/DeepScaleR-1.5B-Preview"
    assert (math.rollout.thinking_budget, math.rollout.solution_budget) == (1024, 1024)
    assert math.trainer["learning_rate"] == 1e-6 and math.trainer["num_generations"] == 8
    assert math.trainer["beta"] == 0.001 and math.trainer["entropy_coef"] == 0.001 and math.trainer["epsilon"] == 0.2
    code = load_config(ROOT / "recipes/e1-code-14b.yaml")
    assert code.model.name_or_path == "agentica-org/DeepCoder-14B-Preview"
    assert (code.trainer["epsilon"], code.trainer["epsilon_high"], code.trainer["beta"]) == (0.2, 0.28, 0.0)
    assert math.rollout.engine == code.rollout.engine == "vllm"  # budgets inside vLLM, as the official runs used vLLM
    assert load_config(ROOT / "recipes/toy.yaml", ["--rollout.engine", "vllm"]).rollout.engine == "vllm"
    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(ROOT / "recipes/toy.yaml", ["--rollout.engine", "sglang"])
    with pytest.raises(ConfigError, match="use_vllm"):
        load_config(ROOT / "recipes/toy.yaml", ["--use_vllm", "true"])


def test_lora_settings_are_checked():
    cfg = load_config(ROOT / "recipes/toy.yaml", ["--model.lora_r", "8"])
    assert cfg.model.lora().enabled and cfg.model.lora().r == 8
    assert not load_config(ROOT / "recipes/toy.yaml").model.lora().enabled
    with pytest.raises(ConfigError, match="model.lora_r"):
        load_config(ROOT / "recipes/toy.yaml", ["--model.lora_r", "-1"])
    with pytest.raises(ConfigError, match="model.lora_alpha"):
        load_config(ROOT / "recipes/toy.yaml", ["--model.lora_alpha", "0"])
    with pytest.raises(ConfigError, match="vllm"):
        load_config(ROOT / "recipes/toy.yaml", ["--model.lora_r", "8", "--rollout.engine", "vllm"])


def test_supervised_warmup_with_lora_merges_into_the_model(tmp_path):
    """Adapters train, then fold into the very model object passed in: plain Linear layers, changed weights."""
    import torch

    from elastic_reasoning.models.toy import build_toy_model, build_toy_tokenizer
    from elastic_reasoning.training.lora import LoraSettings
    from elastic_reasoning.training.sft import WorkedExample, supervised_warmup

    tok = build_toy_tokenizer()
    model = build_toy_model(tok, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    examples = [WorkedExample("what is the sum of 1 2 ?", "1 + 2 = 3", "answer 3")] * 16
    supervised_warmup(model, tok, examples, str(tmp_path / "run"), steps=4, batch_size=4, learning_rate=1e-2,
                      progress=False, lora=LoraSettings(r=4))
    after = model.state_dict()
    assert set(after) == set(before)  # no lora_A / lora_B left behind
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])  # not a LoRA target


def _warmup_rows(tok, n=12):
    from elastic_reasoning.data.synthetic import SyntheticConfig, generate_problems, training_examples
    from elastic_reasoning.training.sft import WorkedExample, encode_example

    task = SyntheticConfig(min_terms=2, max_terms=6)
    examples = training_examples(generate_problems(n, "train", seed=1, config=task), seed=1, config=task,
                                 cut_fraction=0.3)
    rows = []
    for e in examples:
        ids, labels = encode_example(tok, WorkedExample(e.problem.prompt, e.thinking, e.solution, e.cut))
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def test_packed_warmup_batches_give_the_padded_batches_loss_and_gradients():
    """Packing examples end to end (sft._Collator(packed=True)) changes the compute, not the loss: the same loss and
    gradients as right padding, every example whole in one row, positions from 0, no label on its first token."""
    import torch

    from elastic_reasoning.models.toy import build_toy_model, build_toy_tokenizer
    from elastic_reasoning.training.sft import _Collator, packing_is_exact

    tok = build_toy_tokenizer()
    torch.manual_seed(0)
    model = build_toy_model(tok, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=64)
    assert packing_is_exact(model)
    rows = _warmup_rows(tok)
    padded = _Collator(tok.pad_token_id)(rows)
    packed = _Collator(tok.pad_token_id, packed=True)(rows)
    assert packed["input_ids"].shape[0] < len(rows) and packed["input_ids"].shape[1] == padded["input_ids"].shape[1]
    # every example appears whole in one row, starting at position 0, its first token without a label
    found = 0
    for b in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][b] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
        for s, e in zip(starts, starts[1:]):
            piece = packed["input_ids"][b, s:e].tolist()
            match = [r for r in rows if r["input_ids"] == piece]
            if match:
                found += 1
                assert packed["labels"][b, s].item() == -100
                assert packed["labels"][b, s + 1:e].tolist() == match[0]["labels"][1:]
            else:  # the row's tail: padding, no labels
                assert set(piece) == {tok.pad_token_id} and (packed["labels"][b, s:e] == -100).all()
    assert found == len(rows)
    model.train()
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_packing_check_catches_a_model_that_lets_packed_examples_attend_to_each_other(tmp_path):
    """A model that ignores packed position ids (here: a forward that drops them, so the packed examples share one
    causal mask) is caught by sft.packing_is_exact, and the warm-up pads its batches instead, with a warning."""
    from elastic_reasoning.models.toy import build_toy_model, build_toy_tokenizer
    from elastic_reasoning.training import sft

    tok = build_toy_tokenizer()
    model = build_toy_model(tok, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64)
    forward = model.forward

    def leaky(input_ids=None, labels=None, position_ids=None, **kwargs):  # drops the position ids
        return forward(input_ids=input_ids, labels=labels, **kwargs)

    model.forward = leaky
    assert not sft.packing_is_exact(model)
    examples = [sft.WorkedExample("what is the sum of 1 2 ?", "1 + 2 = 3", "answer 3")] * 8
    with pytest.warns(UserWarning, match="pads its batches"):
        sft.supervised_warmup(model, tok, examples, str(tmp_path / "run"), steps=1, batch_size=4, progress=False)
