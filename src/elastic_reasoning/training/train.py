"""``elastic-reasoning train``: GRPO on TRL with budget-constrained rollouts.

This module wires a :class:`~.config.TrainConfig` into TRL's ``GRPOTrainer``: the dataset (prompt + ground-truth
columns), the rewards by name or dotted path, the rollout function of :mod:`.rollout`, a metrics JSONL writer, and
checkpoint/resume. It adds no training loop of its own: multi-GPU and multi-node runs go through ``accelerate
launch`` exactly as for TRL (configs in ``recipes/accelerate/``; docs/scaling.md).

Before anything is loaded or written, :func:`check_launch` refuses a launch whose rollouts cannot work (a server
mode with no reachable server, a tensor-parallel size that does not divide the processes, budgets that do not fit
the context), with one message on every process. Without a GPU, vLLM's weight sync is replaced by what the CPU build
can do (:func:`use_inplace_reload` for colocate, :func:`use_disk_reload` for a server on this machine).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from .config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)


def synthetic_rows(num_problems: int = 2000, seed: int = 0, **options) -> list[dict]:
    """Training problems of the embedded synthetic task (never the held-out ones) as dataset rows."""
    from ..data.synthetic import SyntheticConfig, generate_problems

    problems = generate_problems(num_problems, "train", seed=seed, config=SyntheticConfig(**options))
    return [{"problem": p.prompt, "answer": str(p.answer), "id": p.id} for p in problems]


def load_train_dataset(cfg: TrainConfig):
    """A ``datasets.Dataset`` with a conversational ``prompt`` column, ``answer``, and the source's other columns."""
    from datasets import Dataset, load_dataset

    data = cfg.data
    source = data.dataset
    if source == "synthetic":
        ds = Dataset.from_list(synthetic_rows(**data.synthetic))
    elif Path(source).suffix in (".jsonl", ".json", ".parquet") or Path(source).exists():
        kind = "parquet" if source.endswith(".parquet") else "json"
        if not Path(source).exists():
            raise FileNotFoundError(f"dataset file not found: {source}")
        ds = load_dataset(kind, data_files=source, split="train")
    else:
        ds = load_dataset(source, data.subset, split=data.split)  # a hub id: needs network or a warm cache
    if data.limit is not None:
        ds = ds.select(range(min(data.limit, len(ds))))
    if data.prompt_column not in ds.column_names:
        raise ValueError(f"dataset {source!r} has no column {data.prompt_column!r} (columns: {ds.column_names})")

    def to_prompt(row):
        question = row[data.prompt_column]
        if isinstance(question, list):  # already chat messages
            prompt = question
        else:
            prompt = [{"role": "user", "content": data.prompt_template.format(question=question)}]
        out = {"prompt": prompt}
        if data.answer_column != "answer" and data.answer_column in row:
            out["answer"] = row[data.answer_column]
        return out

    return ds.map(to_prompt)


def build_rewards(cfg: TrainConfig):
    from ..rewards import get_reward

    funcs = []
    for spec in cfg.rewards:
        kwargs = dict(spec.kwargs)
        if spec.name in ("math", "code", "format"):
            kwargs.setdefault("end_of_thinking", cfg.rollout.end_thinking)
        fn = get_reward(spec.name, **kwargs)
        if not getattr(fn, "__name__", None):
            fn.__name__ = spec.name
        funcs.append(fn)
    return funcs, [spec.weight for spec in cfg.rewards]


class MetricsCallback(TrainerCallback):
    """Appends every log (one per step with logging_steps=1) to ``metrics.jsonl`` in the output directory."""

    def __init__(self, path: Path, primary_reward: str | None):
        self.path = path
        self.primary_reward = primary_reward
        self._last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero or ("loss" not in logs and "reward" not in logs):
            return
        now = time.perf_counter()
        row = {"step": state.global_step, **logs, "step_time": now - self._last}
        self._last = now
        if self.primary_reward and f"rewards/{self.primary_reward}/mean" in logs:
            row.setdefault("accuracy", logs[f"rewards/{self.primary_reward}/mean"])
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def build_trainer(cfg: TrainConfig):
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from ..models import load_model_and_tokenizer
    from .rollout import make_rollout_func

    trainer_args = dict(cfg.trainer)
    trainer_args.setdefault("output_dir", "runs/train")
    trainer_args.setdefault("logging_steps", 1)
    trainer_args.setdefault("report_to", "none")
    trainer_args.setdefault("save_strategy", "steps")
    if not torch.cuda.is_available():
        trainer_args.setdefault("use_cpu", True)
        trainer_args.setdefault("bf16", False)
        # TRL's GRPOConfig turns activation checkpointing on by default (GPU memory). On a CPU the models that train
        # here fit in memory, and recomputing every layer's forward in the backward was a third of a GRPO step
        # (py-spy on SmolLM2-135M with LoRA: 46 % of a backward in checkpoint's recompute). Set it to true to keep it.
        trainer_args.setdefault("gradient_checkpointing", False)
    if cfg.rollout.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("rollout.engine vllm needs vLLM: `pip install elastic-reasoning[vllm]` on a GPU "
                               "machine, or `make vllm-env` and .venv-vllm/bin/elastic-reasoning on a CPU machine")
        trainer_args["use_vllm"] = True
        trainer_args.setdefault("vllm_mode", "colocate")
    funcs, weights = build_rewards(cfg)
    trainer_args.setdefault("reward_weights", weights)
    args = GRPOConfig(**trainer_args)
    check_launch(cfg, args)  # before anything is loaded or written

    out = Path(args.output_dir)
    cfg.trainer = trainer_args
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, dtype=cfg.model.dtype, device=device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = load_train_dataset(cfg)

    rollout_func = make_rollout_func(cfg.rollout, seed=args.seed)

    callback = MetricsCallback(out / "metrics.jsonl", getattr(funcs[0], "__name__", None) if funcs else None)
    server_without_gpu = cfg.rollout.engine == "vllm" and args.vllm_mode == "server" and not torch.cuda.is_available()
    with _client_without_weight_transfer() if server_without_gpu else _nothing():
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            rollout_func=rollout_func,
            callbacks=[callback],
            peft_config=cfg.model.lora().peft_config() if cfg.model.lora_r else None,
        )
    if cfg.rollout.engine == "vllm" and not torch.cuda.is_available():
        if args.vllm_mode == "colocate":
            use_inplace_reload(trainer.vllm_generation)
        else:
            use_disk_reload(trainer.vllm_generation)
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "resolved_config.yaml")
    return trainer


# -- start-up checks ---------------------------------------------------------------------------------------------
def check_launch(cfg: TrainConfig, args) -> None:
    """Refuse a launch whose rollouts cannot work, before any model is loaded or anything is written.

    Checked on the main process (the only one that talks to a vLLM server, as in TRL) and the verdict broadcast, so
    every process stops with the same one message: server mode with no server answering within
    ``vllm_server_timeout`` (or one without TRL's development endpoints, with raw log-probs, without a weight-transfer
    engine on a GPU, or not on this machine without a GPU); colocate with a world size the tensor-parallel size does
    not divide; budgets (t* + s*, or the vanilla cap) that do not fit the context of the model or the server."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    # every process: the model runner of its own vLLM (colocate builds one LLM per process or tensor-parallel group)
    problem = _vllm_runner_problem() if cfg.rollout.engine == "vllm" else None
    if state.is_main_process and not problem:
        try:
            problem = _launch_problem(cfg, args, state.num_processes)
        except Exception as err:  # noqa: BLE001 - a failed check is itself the message every process must see
            problem = f"start-up check failed: {type(err).__name__}: {err}"
    if state.num_processes > 1:
        box = [problem]
        broadcast_object_list(box, from_process=0)
        problem = box[0]
    if problem:
        raise ConfigError(problem)


def _launch_problem(cfg: TrainConfig, args, num_processes: int) -> str | None:
    rollout = cfg.rollout
    bound, what = _completion_bound(cfg, args)
    context, where = None, None
    if rollout.engine == "vllm" and args.vllm_mode == "server":
        url = _server_url(args)
        info, problem = _server_info(url, args.vllm_server_timeout)
        if problem:
            return problem
        model_config = info.get("model_config") or {}
        mode = model_config.get("logprobs_mode")
        mode = getattr(mode, "value", mode)
        if mode is not None and mode != "processed_logprobs":
            return (f"the vLLM server at {url} runs with --logprobs-mode {mode}: the budgeted rollouts need "
                    "processed_logprobs (the sampling distribution's, what TRL's importance sampling compares); "
                    "restart it with --logprobs-mode processed_logprobs")
        import torch

        if torch.cuda.is_available() and info.get("weight_transfer_config") is None:
            return (f"the vLLM server at {url} has no weight-transfer engine, which TRL's server mode needs to push "
                    """the trained weights: restart it with --weight-transfer-config '{"backend": "nccl"}'""")
        if not torch.cuda.is_available() and not _is_loopback(url):
            return (f"vllm_mode server without a GPU syncs the weights through a file the server reloads, so the "
                    f"server must run on this machine; {url} is not a loopback address")
        if not torch.cuda.is_available() and _model_config_value(cfg, "tie_word_embeddings"):
            return ("vllm_mode server without a GPU syncs the weights through the server's in-place reload, which on "
                    "vLLM's CPU build can leave a tied output layer (lm_head = embedding) computing with the old "
                    "weights (it does in float32), and the server cannot be told to refresh it: use a model with "
                    "untied embeddings, colocate mode, or a GPU (TRL's NCCL weight transfer)")
        context, where = model_config.get("max_model_len"), f"the server's max_model_len ({url})"
    elif rollout.engine == "vllm":
        tp = args.vllm_tensor_parallel_size
        if num_processes % tp:
            return (f"vllm_mode colocate: vllm_tensor_parallel_size {tp} does not divide the {num_processes} "
                    f"processes of this launch; launch a multiple of {tp} processes or change the size")
        context = args.vllm_max_model_length or _model_context(cfg)
        where = ("vllm_max_model_length" if args.vllm_max_model_length else "the model's max_position_embeddings")
    else:
        context, where = _model_context(cfg), "the model's max_position_embeddings"
    if context is not None and bound >= context:
        return (f"{what} = {bound} tokens per completion does not fit in {where} = {context} (the prompt needs room "
                "too): lower the budgets or raise the context")
    return None


def _completion_bound(cfg: TrainConfig, args) -> tuple[int, str]:
    """The most tokens one rollout may sample (forced tokens come on top), and how to name it."""
    rollout = cfg.rollout
    if rollout.mode == "vanilla":
        return args.max_completion_length, "max_completion_length (the vanilla cap)"
    thinking = max(rollout.thinking_budget_mix or [rollout.thinking_budget])
    return thinking + rollout.solution_budget, "thinking + solution budget"


def _model_context(cfg: TrainConfig) -> int | None:
    """The model's context length from its config (None where it cannot be read here: the load will say why)."""
    return _model_config_value(cfg, "max_position_embeddings")


def _model_config_value(cfg: TrainConfig, key: str):
    try:
        from transformers import AutoConfig

        from ..models import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name_or_path))
    except Exception:  # noqa: BLE001 - a missing model is the model loader's error to report, with its own message
        return None
    return getattr(config, key, None)


def _server_url(args) -> str:
    # TRL's VLLMGeneration: server_base_url wins; else http://{server_host}:{server_port}
    if args.vllm_server_base_url:
        return args.vllm_server_base_url.rstrip("/")
    return f"http://{args.vllm_server_host}:{args.vllm_server_port}"


def _is_loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified  # TRL's default host is 0.0.0.0: this machine


def _server_info(url: str, timeout: float) -> tuple[dict, str | None]:
    """Wait (up to ``timeout`` seconds, as TRL's client does) for the server's /health, then read its configuration
    from /server_info (TRL's development endpoint). Returns (vllm_config, problem)."""
    import httpx

    deadline = time.monotonic() + max(0.0, float(timeout))
    last = "no answer"
    while True:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                break
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        if time.monotonic() >= deadline:
            return {}, (f"vllm_mode server: no vLLM server answers at {url} ({last} after {timeout:g} s, "
                        "--vllm_server_timeout). Start one first, in an environment with this package installed "
                        "(the budget processor): `VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --logprobs-mode "
                        "processed_logprobs --weight-transfer-config '{\"backend\": \"nccl\"}'` (docs/scaling.md), "
                        "and point --vllm_server_base_url (or --vllm_server_host/--vllm_server_port) at it")
        time.sleep(1.0)
    response = httpx.get(f"{url}/server_info", params={"config_format": "json"}, timeout=30)
    if response.status_code == 404:
        return {}, (f"the vLLM server at {url} does not expose its development endpoints, which TRL's server mode "
                    "uses (server info, weight sync): restart it with VLLM_SERVER_DEV_MODE=1 in its environment")
    if response.status_code != 200:
        return {}, f"the vLLM server at {url} answered /server_info with HTTP {response.status_code}"
    return response.json().get("vllm_config") or {}, None


def _vllm_runner_problem() -> str | None:
    """vLLM's V2 model runner (its default on GPUs with Triton in recent versions) accepts only V2-interface logits
    processors and refuses to start with a V1-interface plugin installed; the budget processor implements the V1
    interface. Unless the user chose a runner, the V1 runner is chosen here for TRL's in-process vLLM (colocate); an
    explicit choice of the V2 runner is refused with this reason. (A ``vllm serve`` started elsewhere needs
    ``VLLM_USE_V2_MODEL_RUNNER=0`` in its own environment: docs/scaling.md.)"""
    try:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
    except ImportError:  # a vLLM without the V2 runner's processor interface: nothing to choose
        return None
    from ..generation.vllm_processor import ElasticBudgetLogitsProcessor

    if issubclass(ElasticBudgetLogitsProcessor, V2LogitsProcessor):
        return None
    choice = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if choice is None:
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        logger.info("VLLM_USE_V2_MODEL_RUNNER=0: the budget logits processor implements vLLM's V1 interface, which "
                    "vLLM's V2 model runner refuses")
        return None
    if choice.strip().lower() in ("1", "true", "yes"):
        return ("VLLM_USE_V2_MODEL_RUNNER is set to use vLLM's V2 model runner, which refuses V1-interface logits "
                "processors, and the budget processor (generation/vllm_processor.py) implements the V1 interface: "
                "unset it or set VLLM_USE_V2_MODEL_RUNNER=0")
    return None


@contextmanager
def _nothing():
    yield


@contextmanager
def _client_without_weight_transfer():
    """TRL's server mode without a GPU: TRL's ``VLLMGeneration`` opens its client's NCCL weight-transfer group on the
    main process (``init_communicator``), which needs CUDA. While the trainer is built, its client class skips that
    step; :func:`use_disk_reload` then replaces the weight sync. Generation through the server is unaffected."""
    import trl.generation.vllm_generation as vllm_generation

    original = vllm_generation.VLLMClient

    class ClientWithoutWeightTransfer(original):
        def init_communicator(self, device=0):  # noqa: ARG002 - the weights go through use_disk_reload instead
            self.communicator = None

    vllm_generation.VLLMClient = ClientWithoutWeightTransfer
    try:
        yield
    finally:
        vllm_generation.VLLMClient = original


def use_inplace_reload(generation) -> None:
    """Weight sync for TRL's colocate mode on vLLM's CPU build.

    The CPU build repacks linear weights after loading (their parameters are left empty), so TRL's per-parameter
    ``load_weights`` cannot update them. vLLM's in-place reload (``model_runner.reload_weights``) runs the loading and
    the repacking again from the trainer's parameters (checkpoint names, as TRL yields them)."""
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner

    def sync_weights() -> None:
        runner.reload_weights(weights_iterator=((name, param.detach()) for name, param in
                                                generation._iter_named_params()))
        refresh_tied_cpu_kernels(runner.model)
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


def refresh_tied_cpu_kernels(model) -> None:
    """After vLLM's in-place reload on its CPU build: re-run the post-loading step of layers that share their weight
    with another (a tied ``lm_head``, which is the embedding). The reload re-processes only the layers it loaded
    weights into; a tied output layer loads none (its checkpoint name is skipped), so its prepacked CPU GEMM kernel
    (``cpu_linear``, a oneDNN handle made from the weight at load time) kept computing with the old embedding."""
    by_weight: dict[int, list] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is not None and hasattr(module, "cpu_linear") and hasattr(module, "quant_method"):
            by_weight.setdefault(id(weight), []).append(module)
    for modules in by_weight.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)


def use_disk_reload(generation) -> None:
    """Weight sync for TRL's server mode without a GPU (a ``vllm serve`` on this machine, vLLM's CPU build).

    TRL streams the weights over an NCCL group (GPUs only). Here the main process writes the trainer's parameters
    (checkpoint names, gathered as TRL gathers them: every process iterates, since gathering is collective) to a
    safetensors file in a private temporary folder and asks the server to reload its weights in place from it,
    through vLLM's development endpoint ``/collective_rpc`` (``reload_weights``, the same in-place reload as
    :func:`use_inplace_reload`), then resets its prefix cache as TRL does."""
    import atexit
    import shutil
    import tempfile

    accelerator = generation.accelerator
    folder = None
    if accelerator.is_main_process:
        folder = Path(tempfile.mkdtemp(prefix="elastic-reasoning-weights-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)

    def sync_weights() -> None:
        tensors = {}
        for name, param in generation._iter_named_params():  # every process takes part in the gathers
            if accelerator.is_main_process:
                tensors[name] = param.detach().to("cpu", copy=True).contiguous()
        if not accelerator.is_main_process:
            return
        from safetensors.torch import save_file

        save_file(tensors, str(folder / "model.safetensors"))
        client = generation.vllm_client
        response = client.session.post(f"{client.base_url}/collective_rpc", timeout=600,
                                       json={"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        if response.status_code != 200:
            raise RuntimeError(f"the vLLM server at {client.base_url} did not reload the weights from {folder}: "
                               f"HTTP {response.status_code} {response.text[:500]}")
        client.reset_prefix_cache()

    generation.sync_weights = sync_weights


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def train(cfg: TrainConfig, *, bar=None) -> Path:
    """Train; returns the output directory (its ``final/`` holds the model). ``bar``: a tqdm bar advanced once per
    step instead of the Trainer's console log lines (``training/progress.py``)."""
    trainer = build_trainer(cfg)
    if bar is not None:
        from .progress import quiet

        quiet(trainer, bar)
    out = Path(trainer.args.output_dir)
    resume_from = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        print(f"no checkpoint in {out}: starting from scratch")
    if resume_from is None and (out / "metrics.jsonl").exists() and trainer.accelerator.is_main_process:
        (out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
    elif resume_from is not None and trainer.accelerator.is_main_process:
        _truncate_metrics(out / "metrics.jsonl", int(Path(resume_from).name.split("-")[-1]))
    trainer.train(resume_from_checkpoint=resume_from)
    if trainer.accelerator.is_main_process:
        if cfg.model.lora_r:  # a plain checkpoint, adapters merged in: every engine and eval loads it without peft
            from .lora import merge_lora

            merged = merge_lora(trainer.accelerator.unwrap_model(trainer.model))
            merged.save_pretrained(str(out / "final"))
            trainer.processing_class.save_pretrained(str(out / "final"))
        else:
            trainer.save_model(str(out / "final"))
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are trained again, so nothing appears twice."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(r + "\n" for r in rows))
