"""The one interface every generation engine implements. No torch.

Engines (each in its own module of this package):

============================== ========================================= =========================================
engine                         where it decodes                          ``load_engine`` backend
============================== ========================================= =========================================
:class:`TransformersEngine`    a Hugging Face causal LM in this process  ``transformers``
:class:`VLLMEngine`            vLLM's offline ``LLM`` in this process    ``vllm``
:class:`VLLMServerEngine`      a ``vllm serve`` / ``trl vllm-serve``     ``vllm-server`` (``endpoint=`` its URL)
                               through TRL's ``VLLMClient``
:class:`RemoteEngine`          any OpenAI-compatible completions server  ``remote`` (``endpoint=`` its URL)
============================== ========================================= =========================================

All of them return :class:`~.record.Completion` records with the same fields and the same meaning of ``logprobs``
(``record.py``). Evaluation, serving and training get their engine from :func:`.engines.load_engine` (training
builds the in-trainer ones from TRL's objects) and use only what this protocol names; ``continue_ids`` is the one
optional capability (shared-thinking sweeps), offered by the engines that hold the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..budget import BudgetConfig, BudgetTokens, Phase
from .prompts import Prompt
from .record import Completion, SamplingConfig


@runtime_checkable
class Engine(Protocol):
    """Budgeted generation: ``num_samples`` completions per prompt, in prompt order then sample order."""

    tokenizer: Any

    def budget_tokens(self, budget: BudgetConfig) -> BudgetTokens: ...

    def generate(self, prompts: Sequence[Prompt], budget: BudgetConfig | Sequence[BudgetConfig],
                 sampling: SamplingConfig = SamplingConfig(), *, num_samples: int = 1, progress: bool = False,
                 **kwargs: Any) -> list[Completion]: ...


@runtime_checkable
class PrefixEngine(Engine, Protocol):
    """An engine that can also continue already-rendered token prefixes in a given phase (shared thinking)."""

    def render(self, prompt: Prompt, budget: BudgetConfig) -> list[int]: ...

    def make_generator(self, sampling: SamplingConfig) -> Any: ...

    def continue_ids(self, prefixes: Sequence[Sequence[int]], budget: BudgetConfig,
                     sampling: SamplingConfig = SamplingConfig(), *, phase: Phase = Phase.THINKING,
                     stop_after_thinking: bool = False, generator: Any = None) -> list[Completion]: ...
