"""Budgeted generation on vLLM's async engine (``AsyncLLM``), one request at a time, for serving.

The server's ``--backend vllm``: every choice of every HTTP request becomes one vLLM request, submitted as it
arrives; vLLM's own scheduler batches them continuously (a request joins at the next step, a finished one leaves at
once), and :class:`~.vllm_processor.ElasticBudgetLogitsProcessor`, loaded in the engine, runs both budgets inside it
in one pass. Tokens stream back as deltas (``RequestOutputKind.DELTA``) for a choice that streams or watches stop
strings; otherwise vLLM hands back the finished request only (``FINAL_ONLY``, as vLLM's API server does). The final
record is rebuilt with the same :func:`~.vllm_engine.replay` as the offline :class:`~.vllm_engine.VLLMEngine`
(sampled/forced mask exact, log-probs vLLM's ``processed_logprobs``, NaN for forced tokens), so a served completion
is the offline engine's record.

The engine is built as ``VLLMEngine`` builds its ``LLM``: the processor (unless the entry point registers it),
``logprobs_mode="processed_logprobs"``, ``generation_config="vllm"``, eager mode and a small KV cache on a CPU.
``AsyncLLM`` always runs its engine core in a child process (vLLM's v1 architecture), so its decoding never competes
with the server's event loop for the interpreter lock.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from ..budget import BudgetConfig, BudgetRow, BudgetTokens
from ..special_tokens import BudgetTokenCache
from .record import Completion, SamplingConfig
from .seeds import fresh_seed
from .two_call import completion_of
from .vllm_args import budget_extra_args, request_max_tokens, vllm_sampling_kwargs
from .vllm_engine import LOGPROBS_MODE, _cpu_defaults, processor_registered, replay, token_logprobs

log = logging.getLogger(__name__)
_request_ids = itertools.count()


class VLLMAsyncEngine:
    """``await engine.generate_one(...)`` decodes one budgeted completion on a shared ``AsyncLLM``."""

    is_async = True

    def __init__(self, engine_args, tokenizer, *, max_model_len: int, model_path: str):
        self.engine_args = engine_args
        self.llm = None  # created by start(), inside the server's event loop (as vLLM's own API server does)
        self.tokenizer = tokenizer
        self.context_length = max_model_len
        self.model_path = model_path
        model_eos = None
        try:
            from transformers import GenerationConfig

            model_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except Exception:  # noqa: BLE001 - a model without a generation config keeps the tokenizer's EOS
            pass
        self._budget_tokens = BudgetTokenCache(tokenizer, model_eos)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "auto", max_model_len: int | None = 2048,
                        max_num_seqs: int | None = None, seed: int = 0, **engine_kwargs: Any) -> "VLLMAsyncEngine":
        import torch
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs

        from ..models import resolve_model_path
        from .vllm_processor import ElasticBudgetLogitsProcessor

        path = resolve_model_path(name_or_path)
        max_model_len = max_model_len or 2048
        engine_kwargs.setdefault("generation_config", "vllm")
        if not torch.cuda.is_available():
            _cpu_defaults()
            engine_kwargs.setdefault("enforce_eager", True)
        processors = list(engine_kwargs.pop("logits_processors", []))
        if not processor_registered():
            processors.append(ElasticBudgetLogitsProcessor)
        if max_num_seqs is not None:
            engine_kwargs["max_num_seqs"] = max_num_seqs
        args = AsyncEngineArgs(model=path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                               logits_processors=processors, logprobs_mode=LOGPROBS_MODE, **engine_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(args, tokenizer, max_model_len=max_model_len, model_path=path)

    async def start(self) -> None:
        """Start vLLM's engine (its engine core in a child process); call inside the running event loop."""
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.llm is None:
            self.llm = AsyncLLM.from_engine_args(self.engine_args)

    def budget_tokens(self, budget: BudgetConfig) -> BudgetTokens:
        return self._budget_tokens(budget)

    async def generate_one(self, prompt_ids: list[int], budget: BudgetConfig, sampling: SamplingConfig, *,
                           seed: int | None = None, on_token: Callable[[int], None] | None = None,
                           should_stop: Callable[[], bool] | None = None, sample_index: int = 0,
                           stream: bool = True, on_first_token: Callable[[float], None] | None = None) -> Completion:
        """One completion. ``on_token(token_id)`` gets every token of the completion as vLLM emits it (the stop
        token the processor forces after a spent budget is not one). Cancelling the awaiting task aborts the vLLM
        request at once; so does ``should_stop()`` turning true (a stop string matched): the completion then ends
        with the tokens so far.

        ``stream=False`` (no ``on_token``, no ``should_stop``): vLLM hands back only the finished request
        (``RequestOutputKind.FINAL_ONLY``, what vLLM's own API server asks for a request that does not stream, and
        what its offline ``LLM`` uses), instead of waking this coroutine at every step of every request.
        ``on_first_token(t)``: the ``time.monotonic()`` at which the first token came (with ``stream=False``, from
        vLLM's request stats, when it keeps them)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        tokens = self.budget_tokens(budget)
        room = self.context_length - len(prompt_ids)
        if room <= 0:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in the model's context of "
                             f"{self.context_length}")
        if seed is None and sampling.seed is not None:
            seed = sampling.seed
        if not stream and (on_token is not None or should_stop is not None):
            raise ValueError("stream=False takes neither on_token nor should_stop")
        params = SamplingParams(
            **vllm_sampling_kwargs(sampling), seed=seed, max_tokens=request_max_tokens(budget, tokens, room),
            logprobs=0, skip_special_tokens=False, detokenize=False,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            extra_args=budget_extra_args(budget, tokens, sampling=sampling))
        request_id = f"er-{next(_request_ids)}-{fresh_seed() & 0xFFFFFF:06x}"
        shadow = BudgetRow(budget, tokens)  # knows when the completion ends, to stream no token past it
        ids: list[int] = []
        logprobs: list[float] = []
        finished = False
        submitted = time.monotonic()
        try:
            async for out in self.llm.generate({"prompt_token_ids": list(prompt_ids)}, params, request_id):
                delta = out.outputs[0]
                new = list(delta.token_ids)
                if on_first_token is not None and new and not ids:
                    latency = getattr(out.metrics, "first_token_latency", None) if not stream else None
                    on_first_token(submitted + latency if latency else time.monotonic())
                ids += new
                logprobs += token_logprobs(new, delta.logprobs)
                if not stream:
                    finished = out.finished
                    continue
                for token in new:
                    if shadow.done:
                        break
                    shadow.step(token)
                    if on_token is not None:
                        on_token(token)
                finished = out.finished
                if not finished and should_stop is not None and should_stop():
                    break
            return completion_of(replay(BudgetRow(budget, tokens), ids, logprobs), None, self.tokenizer.decode,
                                 prompt_index=0, sample_index=sample_index, prompt_ids=list(prompt_ids))
        finally:
            if not finished:  # cancelled (client gone) or failed: free vLLM's slot now
                await self.llm.abort(request_id)

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()

