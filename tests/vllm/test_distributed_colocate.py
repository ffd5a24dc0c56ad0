"""Scale-out with vLLM's colocate mode: two processes (`accelerate launch --num_processes 2`, gloo), one `LLM` per
rank (vLLM's CPU build, `vllm_tensor_parallel_size` 1), each generating its own share with the budgets inside vLLM;
and the CPU weight sync of colocate mode reaching a tied output layer (tensor parallelism and sleep mode need GPUs:
tests/test_distributed_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from ..distributed_checks import check_run, child_env, launch


@pytest.mark.distributed
def test_two_processes_vllm_colocate_mode(toy_dir, tmp_path):
    env = child_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
    r = launch(tmp_path, toy_dir, 2, "--rollout.engine", "vllm", "--vllm_mode", "colocate",
               "--vllm_max_model_length", "512", env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = check_run(tmp_path, 2, engine="vllm-colocate")
    for step in range(2):  # each rank generated its own share, in its own LLM
        assert rows[(step, 0)]["prompts"] != rows[(step, 1)]["prompts"]


def test_colocate_cpu_weight_sync_reaches_a_tied_output_layer(toy_dir):
    """vLLM's in-place reload (the CPU build's colocate weight sync, train.py `use_inplace_reload`) re-processes only
    the layers it loaded weights into; the toy model's lm_head is its embedding (tied) and loads none, and in float32
    its oneDNN kernel holds its own copy of the weight, which kept the old embedding until `refresh_tied_cpu_kernels`.
    After the sync, vLLM decodes as the changed model does, log-probs included."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from elastic_reasoning.budget import BudgetConfig
    from elastic_reasoning.generation.record import SamplingConfig
    from elastic_reasoning.generation.transformers_engine import TransformersEngine
    from elastic_reasoning.generation.vllm_engine import VLLMEngine
    from elastic_reasoning.training.train import use_inplace_reload

    engine = VLLMEngine.from_pretrained(str(toy_dir), dtype="float32", max_model_len=256)
    model = AutoModelForCausalLM.from_pretrained(str(toy_dir), dtype=torch.float32)
    assert model.config.tie_word_embeddings
    with torch.no_grad():  # the embedding, and so the lm_head (one tensor); the norms absorb most of it at the input
        model.get_input_embeddings().weight.mul_(1.5)
    generation = SimpleNamespace(llm=engine.llm, _iter_named_params=model.named_parameters)  # TRL's, as far as used
    use_inplace_reload(generation)
    generation.sync_weights()
    prompts, budget, greedy = ["what is 4 + 5 ?", "what is the sum of 1 2 3 ?"], BudgetConfig(4, 3), SamplingConfig(0)
    ours = engine.generate(prompts, budget, greedy)
    ref = TransformersEngine(model.eval(), engine.tokenizer).generate(prompts, budget, greedy)
    assert [c.completion_ids for c in ours] == [c.completion_ids for c in ref]
    assert [lp for c in ours for lp in c.logprobs] == pytest.approx([lp for c in ref for lp in c.logprobs], abs=1e-3,
                                                                    nan_ok=True)
