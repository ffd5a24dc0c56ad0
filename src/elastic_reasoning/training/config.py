"""Training configuration: one dataclass per concern, loaded from a YAML recipe, overridable from the command line.

A recipe has the sections ``model``, ``data``, ``rollout``, ``rewards`` and ``trainer``. ``trainer`` holds TRL
``GRPOConfig`` fields verbatim (learning rate, batch sizes, KL ``beta``, clip ``epsilon``...), so every TRL knob is
reachable without this project re-declaring it. The resolved config is saved as ``resolved_config.yaml`` in the
output directory of every run.

Overrides: ``--section.field value`` or ``--field value`` (looked up in model, data, rollout, then trainer);
hyphens and underscores are interchangeable; values are parsed as YAML (``--max_steps 3``, ``--bf16 true``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

RolloutMode = Literal["elastic", "vanilla", "truncate"]


@dataclass
class ModelConfig:
    name_or_path: str = "toy"
    """Model directory, hub id, or short name (toy, smollm2-135m)."""
    dtype: str | None = None
    """Weights dtype (float32, bfloat16); default: float32 on CPU, bfloat16 on GPU."""
    lora_r: int = 0
    """Train LoRA adapters of this rank on every linear layer instead of every weight (``training/lora.py``);
    0: full fine-tuning. The saved ``final/`` model has the adapters merged in."""
    lora_alpha: int = 32
    """LoRA scale numerator (updates are scaled by ``lora_alpha / lora_r``)."""

    def lora(self):
        from .lora import LoraSettings

        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha)


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """'synthetic' (the embedded task), a local .jsonl/.json/.parquet file, or a hub id (needs network)."""
    subset: str | None = None
    """Hub dataset config name (e.g. 'primeintellect')."""
    split: str = "train"
    prompt_column: str = "problem"
    """Column holding the question (or a list of chat messages)."""
    answer_column: str = "answer"
    """Column holding the ground truth, passed to the rewards as ``answer``."""
    prompt_template: str = "{question}"
    """Format of the user turn; the paper's math prompt is
    "{question} Let's think step by step and output the final answer within \\boxed{{}}."."""
    limit: int | None = None
    """Use only the first N rows."""
    synthetic: dict = field(default_factory=dict)
    """Options of the synthetic task generator (size, difficulty...)."""


@dataclass
class RolloutConfig:
    mode: RolloutMode = "elastic"
    """elastic: thinking cut at t*, end of thinking forced, solution budget s*. vanilla: plain GRPO, one cap
    (trainer.max_completion_length). truncate: plain truncation at one total budget t* + s*."""
    thinking_budget: int = 1024
    """t*: tokens the model may sample while thinking (elastic)."""
    thinking_budget_mix: list[int] = field(default_factory=list)
    """Train at a mix of thinking budgets instead of t* alone (elastic): each prompt's group of rollouts draws one
    budget from this list (repeat a value to weight it), so GRPO's advantage compares rollouts of one budget. The
    draw is a hash of (seed, step, prompt text): every process gives a group the same budget. Empty: t* only."""
    solution_budget: int = 1024
    """s*: tokens sampled after thinking ends, EOS included (elastic)."""
    end_thinking: str = "</think>"
    start_thinking: str = "<think>"
    transition: str = ""
    eos_in_thinking: str = "end_thinking"
    train_on_forced_tokens: bool = False
    """Whether forced tokens enter the loss. The paper's code trains on them as if sampled (its recipes set this
    true); the default leaves them out through TRL's env_mask: they were not sampled by the policy."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Rollout engine. ``transformers``: the one-pass engine on the policy being trained (CPU or GPU). ``vllm``: the
    same budgets inside vLLM through TRL (``use_vllm`` is switched on; ``trainer.vllm_mode`` colocate (default) or
    server, TRL syncing the weights before each generation); the budget logits processor reaches TRL's engine
    through this package's ``vllm.logits_processors`` entry point."""
    max_batch_size: int = 256
    """Rows decoded together by the transformers engine."""
    continuous: bool = True
    """Transformers rollouts decode with the continuous decoder (``TransformersEngine(continuous=True)``: a finished
    rollout leaves the batch at once, and a step costs less Python than transformers' ``generate``), except under
    ZeRO-3 or FSDP, whose sharded forwards keep the processes' decoding steps in lockstep (transformers'
    ``synced_gpus``). False: transformers' ``generate`` everywhere."""


@dataclass
class RewardSpec:
    name: str
    """Short name (math, code, format) or dotted path to a user function ('pkg.mod:fn')."""
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    """Arguments of a reward factory (e.g. {timeout_s: 5})."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    trainer: dict[str, Any] = field(default_factory=dict)
    """TRL GRPOConfig fields."""
    resume: bool = False
    """Continue from the last checkpoint in trainer.output_dir."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig}


class ConfigError(ValueError):
    pass


def _build(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)


def from_dict(raw: dict) -> TrainConfig:
    raw = dict(raw or {})
    allowed = set(SECTIONS) | {"rewards", "trainer", "resume", "paper"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: {sorted(allowed)}")
    cfg = TrainConfig(
        model=_build(ModelConfig, raw.get("model") or {}, "model"),
        data=_build(DataConfig, raw.get("data") or {}, "data"),
        rollout=_build(RolloutConfig, raw.get("rollout") or {}, "rollout"),
        trainer=dict(raw.get("trainer") or {}),
        resume=bool(raw.get("resume", False)),
    )
    rewards = raw.get("rewards", ["math"])
    specs = []
    for item in rewards:
        if isinstance(item, str):
            specs.append(RewardSpec(item))
        elif isinstance(item, dict):
            specs.append(_build(RewardSpec, item, "rewards"))
        else:
            raise ConfigError(f"rewards: expected a name or a mapping, got {item!r}")
    cfg.rewards = specs
    if cfg.rollout.engine not in ("transformers", "vllm"):
        raise ConfigError(f"rollout.engine must be transformers or vllm, got {cfg.rollout.engine!r}")
    if cfg.rollout.engine == "transformers" and cfg.trainer.get("use_vllm"):
        raise ConfigError("trainer.use_vllm is set but rollout.engine is transformers: budgeted rollouts run where "
                          "rollout.engine says; set rollout.engine: vllm to generate them in vLLM")
    vllm_mode = cfg.trainer.get("vllm_mode", "colocate")
    if vllm_mode not in ("colocate", "server"):
        raise ConfigError(f"trainer.vllm_mode must be colocate or server, got {vllm_mode!r}")
    tp = cfg.trainer.get("vllm_tensor_parallel_size", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"trainer.vllm_tensor_parallel_size must be a positive integer, got {tp!r}")
    if cfg.rollout.mode not in ("elastic", "vanilla", "truncate"):
        raise ConfigError(f"rollout.mode must be elastic, vanilla or truncate, got {cfg.rollout.mode!r}")
    mix = cfg.rollout.thinking_budget_mix
    if not isinstance(mix, list) or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in mix):
        raise ConfigError(f"rollout.thinking_budget_mix must be a list of non-negative integers, got {mix!r}")
    if mix and cfg.rollout.mode != "elastic":
        raise ConfigError("rollout.thinking_budget_mix applies to rollout.mode elastic only")
    for key in ("lora_r", "lora_alpha"):
        value = getattr(cfg.model, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "lora_r" else 1):
            raise ConfigError(f"model.{key} must be an integer >= {0 if key == 'lora_r' else 1}, got {value!r}")
    if cfg.model.lora_r and cfg.rollout.engine == "vllm":
        raise ConfigError("model.lora_r with rollout.engine vllm is not supported: TRL would sync adapter weights "
                          "into vLLM's base model; use full fine-tuning (lora_r 0) with vLLM rollouts")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        raw.pop("paper", None)  # documentation of the paper's settings that have no knob here
    apply_overrides(raw, overrides or [])
    return from_dict(raw)


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    """Apply ``--key value`` pairs (or ``--key=value``) to the raw recipe dict in place."""
    items: list[tuple[str, str]] = []
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} (overrides are --key value)")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides):
                raise ConfigError(f"override {token} has no value")
            value = overrides[i + 1]
            i += 2
        items.append((key.replace("-", "_"), value))
    trainer_fields = _grpo_fields()
    for key, text in items:
        value = yaml.safe_load(text)
        if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
            value = text  # YAML 1.1 reads no/yes/on/off as booleans; TRL means the strings (save_strategy: no)
        if key == "resume":
            raw["resume"] = bool(value)
            continue
        if "." in key:
            section, name = key.split(".", 1)
            raw.setdefault(section, {})
            raw[section][name] = value
            continue
        for section, cls in SECTIONS.items():
            if key in {f.name for f in dataclasses.fields(cls)}:
                raw.setdefault(section, {})[key] = value
                break
        else:
            if trainer_fields and key not in trainer_fields:
                raise ConfigError(f"unknown override --{key}: not a field of model, data, rollout or TRL's GRPOConfig")
            raw.setdefault("trainer", {})[key] = value


def _grpo_fields() -> set[str]:
    try:
        from trl import GRPOConfig
    except ImportError:  # pragma: no cover - trl is a dependency
        return set()
    return {f.name for f in dataclasses.fields(GRPOConfig)}
