"""Scale-out paths this CPU cannot run, ready for a GPU (`make gpu-check` runs them all: tests/gpu_check.py).

Each is marked `gpu` and skipped here with the reason. What they cover:

* DeepSpeed ZeRO-3 with the transformers engine: `unwrap_model_for_generation` gathers the sharded weights once per
  rollout (counted), not at every decoding step (needs CUDA and deepspeed; DeepSpeed's CPU path needs oneCCL);
* FSDP with the transformers engine (accelerate refuses FSDP without an accelerator device);
* vLLM colocate with sleep mode (`vllm_enable_sleep_mode`: vLLM's sleep mode is CUDA-only): vLLM is asleep after
  every rollout and woken for the next;
* vLLM colocate with tensor parallelism 2 (two GPUs): the group's prompts are gathered and each rank keeps its share;
* vLLM server mode with TRL's NCCL weight transfer (two GPUs: the server on one, the trainer on the other);
* the budget processor on the model runner vLLM picks by default on this GPU (vLLM's V2 runner refuses V1-interface
  logits processors).

One process per GPU; with a single GPU the multi-rank cases that need two are skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

from .distributed_checks import ROOT, check_run, child_env, free_port, launch

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None



def requires(why: str, *, gpus: int = 1, vllm: bool = False, deepspeed: bool = False):
    """Skip, saying why this path cannot run on this CPU and what is missing here."""
    missing = []
    if GPUS < gpus:
        missing.append(f"{gpus} CUDA GPU{'s' if gpus > 1 else ''} ({GPUS} here)")
    if vllm and not HAVE_VLLM:
        missing.append("vLLM's CUDA build (pip install -e '.[vllm]')")
    if deepspeed and not HAVE_DEEPSPEED:
        missing.append("deepspeed (pip install deepspeed)")
    return pytest.mark.skipif(bool(missing), reason=f"{why}; needs {', '.join(missing)}")


def gpu_env(**extra) -> dict:
    env = child_env(**extra)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    return env


@pytest.fixture(scope="module")
def toy_bf16(toy_dir, tmp_path_factory):
    """The toy model saved in bfloat16: TRL's in-process LLM takes the checkpoint's dtype, and vLLM's GPU attention
    backends are made for 16-bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("toy-bf16") / "toy"
    AutoModelForCausalLM.from_pretrained(str(toy_dir), dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(toy_dir)).save_pretrained(out)
    return out


@pytest.mark.gpu
@requires("DeepSpeed ZeRO-3 runs on CUDA (its CPU path needs oneCCL)", deepspeed=True)
def test_zero3_transformers_engine_gathers_the_weights_once_per_rollout(toy_dir, tmp_path):
    processes = min(GPUS, 2)
    r = launch(tmp_path, toy_dir, processes, "--bf16", "true", env=gpu_env(COUNT_ZERO3_GATHERS="1"),
               accelerate_config="recipes/accelerate/zero3.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    rows = check_run(tmp_path, processes, engine="transformers")
    assert all(row["zero3_gathers"] == 1 for row in rows.values()), {k: v["zero3_gathers"] for k, v in rows.items()}


@pytest.mark.gpu
@requires("accelerate's FSDP refuses to run without an accelerator device (CUDA, XPU...)")
def test_fsdp_transformers_engine(toy_dir, tmp_path):
    processes = min(GPUS, 2)
    r = launch(tmp_path, toy_dir, processes, "--bf16", "true", env=gpu_env(),
               accelerate_config="recipes/accelerate/fsdp.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    check_run(tmp_path, processes, engine="transformers")


@pytest.mark.gpu
@requires("vLLM's sleep mode is CUDA-only", vllm=True)
def test_colocate_sleep_mode_is_woken_and_put_back_to_sleep(toy_bf16, tmp_path):
    r = launch(tmp_path, toy_bf16, 1, "--rollout.engine", "vllm", "--vllm_mode", "colocate", "--bf16", "true",
               "--vllm_enable_sleep_mode", "true", "--vllm_gpu_memory_utilization", "0.2",
               "--vllm_max_model_length", "512", env=gpu_env(), accelerate_config="recipes/accelerate/ddp.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    rows = check_run(tmp_path, 1, engine="vllm-colocate")
    assert all(row["vllm_sleeping"] is True for row in rows.values())  # asleep after every rollout


@pytest.mark.gpu
@requires("vLLM's CPU build has no tensor parallelism across processes here", gpus=2, vllm=True)
def test_colocate_tensor_parallel_two_gathers_the_group_prompts(toy_bf16, tmp_path):
    r = launch(tmp_path, toy_bf16, 2, "--rollout.engine", "vllm", "--vllm_mode", "colocate", "--bf16", "true",
               "--vllm_tensor_parallel_size", "2", "--vllm_gpu_memory_utilization", "0.2",
               "--vllm_max_model_length", "512", env=gpu_env(), accelerate_config="recipes/accelerate/ddp.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    rows = check_run(tmp_path, 2, engine="vllm-colocate")
    for step in range(2):  # each rank of the group kept its own share of the group's generation
        assert rows[(step, 0)]["prompts"] != rows[(step, 1)]["prompts"]


@pytest.mark.gpu
@requires("TRL's weight transfer is NCCL (CUDA); the server and the trainer each need a GPU", gpus=2, vllm=True)
def test_server_mode_with_trls_nccl_weight_transfer(toy_bf16, tmp_path):
    port = free_port()
    env = dict(gpu_env(), CUDA_VISIBLE_DEVICES="1", VLLM_SERVER_DEV_MODE="1", VLLM_USE_V2_MODEL_RUNNER="0")
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(toy_bf16), "--port", str(port),
           "--max-model-len", "512", "--gpu-memory-utilization", "0.3", "--logprobs-mode", "processed_logprobs",
           "--generation-config", "vllm", "--weight-transfer-config", '{"backend": "nccl"}']
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        r = launch(tmp_path, toy_bf16, 1, "--rollout.engine", "vllm", "--vllm_mode", "server", "--bf16", "true",
                   "--vllm_server_base_url", f"http://127.0.0.1:{port}", "--vllm_server_timeout", "600",
                   env=dict(gpu_env(), CUDA_VISIBLE_DEVICES="0"), accelerate_config="recipes/accelerate/ddp.yaml")
        assert r.returncode == 0, r.stderr[-4000:] + (tmp_path / "server.log").read_text()[-2000:]
        check_run(tmp_path, 1, engine="vllm-server")
    finally:
        server.terminate()
        server.wait(timeout=60)


PROCESSOR_ON_DEFAULT_RUNNER = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    llm = LLM(sys.argv[1], dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.2,
              logprobs_mode="processed_logprobs", generation_config="vllm")
    out = llm.generate([{"prompt_token_ids": [1, 7, 8, 9]}] * 8, SamplingParams(
        temperature=1.0, max_tokens=16, seed=0, extra_args={"thinking_budget": 4, "solution_budget": 3}))
    print(json.dumps({"v2": bool(llm.llm_engine.vllm_config.use_v2_model_runner),
                      "ids": [o.outputs[0].token_ids for o in out]}))
""")


@pytest.mark.gpu
@requires("vLLM's GPU model runners (V1 and V2) run on CUDA only", vllm=True)
def test_budget_processor_loads_on_vllms_default_gpu_model_runner(toy_dir):
    """vLLM's V2 model runner (its default on GPUs) refuses logits processors written to the V1 interface, and it
    loads every processor registered in the environment: this says which runner this GPU gets and whether the
    budget processor runs there."""
    env = gpu_env()
    env.pop("VLLM_USE_V2_MODEL_RUNNER", None)
    r = subprocess.run([sys.executable, "-c", PROCESSOR_ON_DEFAULT_RUNNER, str(toy_dir)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    if "V1-interface plugins are not supported by the V2 model runner" in r.stderr + r.stdout:
        pytest.fail("vLLM's default model runner on this GPU is V2, which refuses the budget logits processor "
                    "(generation/vllm_processor.py implements vLLM's V1 interface and is registered as a "
                    "vllm.logits_processors entry point, so every vLLM engine of this environment fails to start). "
                    "Training chooses the V1 runner itself (VLLM_USE_V2_MODEL_RUNNER=0, train.py); evaluation, "
                    "serving and `vllm serve` need VLLM_USE_V2_MODEL_RUNNER=0 in their environment until the "
                    "processor has a V2 implementation")
    assert r.returncode == 0, r.stderr[-4000:]
    _check_budgeted_ids(r.stdout, toy_dir)


@pytest.mark.gpu
@requires("vLLM's GPU model runners (V1 and V2) run on CUDA only", vllm=True)
def test_budget_processor_on_the_v1_model_runner(toy_dir):
    env = dict(gpu_env(), VLLM_USE_V2_MODEL_RUNNER="0")
    r = subprocess.run([sys.executable, "-c", PROCESSOR_ON_DEFAULT_RUNNER, str(toy_dir)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    _check_budgeted_ids(r.stdout, toy_dir)


def _check_budgeted_ids(stdout: str, toy_dir) -> None:
    """Every completion vLLM returned is what the budget state machine allows (t=4, s=3)."""
    import json

    from transformers import AutoTokenizer

    from elastic_reasoning.budget import BudgetConfig, BudgetRow
    from elastic_reasoning.special_tokens import BudgetTokenCache

    result = json.loads(stdout.strip().splitlines()[-1])
    budget = BudgetConfig(thinking_budget=4, solution_budget=3)
    tokens = BudgetTokenCache(AutoTokenizer.from_pretrained(str(toy_dir)))(budget)
    for ids in result["ids"]:
        row = BudgetRow(budget, tokens)
        for token in ids:
            if row.done:
                break
            assert row.step(token)[0] == token  # every forced token where the state machine put it
        assert row.done and row.thinking_tokens <= 4 and row.solution_tokens <= 3
