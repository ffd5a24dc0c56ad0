"""Low-rank adapters (LoRA, through ``peft``) for the supervised warm-up and GRPO, merged back on save.

Used by both ``training/sft.py`` (the demo's warm-up) and ``training/train.py`` (GRPO), so it lives here, below
both. A trained adapter is always merged into the weights before anything is saved (``merge_lora``): every saved
checkpoint is a plain Hugging Face model that the engines, vLLM and ``eval`` load with no ``peft`` involved.

Why LoRA on a CPU: a full fine-tuning step computes a gradient for every weight matrix and keeps two Adam moments
for each; with adapters the frozen weights need activation gradients only (about a third less work a step on
SmolLM2-135M here, ``docs/demo-smollm2/``) and the optimizer state is a few MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraSettings:
    r: int = 0
    """Rank of the adapters; 0: no adapters (full fine-tuning)."""
    alpha: int = 32
    """Scale numerator (the adapter's update is scaled by ``alpha / r``)."""
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    """peft's name for every linear layer but the output head; or a list of module names."""
    trainable_tokens: list[int] = field(default_factory=list)
    """Token ids whose embedding rows train beside the adapters (peft's ``trainable_token_indices``): the rows of
    tokens just added to the vocabulary (``sft.add_thinking_tokens``), which frozen weights would leave at their
    initial values. Merged into the embedding (and a tied output head) like the adapters."""

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM",
                          trainable_token_indices=list(self.trainable_tokens) or None)


def with_lora(model, settings: LoraSettings):
    """``model`` wrapped with fresh adapters (only they train); ``model`` itself if ``settings.r == 0``."""
    if not settings.enabled:
        return model
    try:
        from peft import get_peft_model
    except ImportError as err:  # a dependency since LoRA was added; a stale environment says so plainly
        raise ImportError("LoRA needs peft: pip install 'peft>=0.13'") from err
    return get_peft_model(model, settings.peft_config())


def merge_lora(model):
    """The plain model with its adapters folded into the weights (a no-op for a model without adapters)."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
