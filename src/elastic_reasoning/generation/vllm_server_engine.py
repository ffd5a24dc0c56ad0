"""Budgeted generation on a ``vllm serve`` (or ``trl vllm-serve``) through TRL's ``VLLMClient``.

The server must load the budget logits processor (it does when this package is installed in its environment: the
``vllm.logits_processors`` entry point). One request per distinct prompt with ``n`` completions, the budgets (and the
real top-k/top-p, see :mod:`.vllm_args`) as ``vllm_xargs``; each completion is replayed through the budget state
machine for its mask and counts, as the offline engine does. TRL's server runs with ``processed_logprobs``, the
definition of ``Completion.logprobs``; forced tokens get NaN.

This is the engine of TRL's server mode (``training/rollout.py`` calls it on the main process only, where TRL keeps
its client, with every process's prompts gathered) and of ``load_engine(backend="vllm-server", endpoint=URL)``. The
request groups of a call are sent concurrently (``max_concurrent_requests``), so the server batches them together as
TRL's single request would be; each has its own seed, so the completions do not depend on the order they are served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..budget import BudgetConfig, BudgetRow, BudgetTokens
from ..special_tokens import BudgetTokenCache
from .prompts import Prompt, render_prompt
from .record import LOGPROBS_SAMPLING, LOGPROBS_UNAVAILABLE, Completion, SamplingConfig, budgets_per_prompt
from .seeds import derive_seed, fresh_seed
from .two_call import completion_of
from .vllm_args import budget_extra_args, request_max_tokens, vllm_sampling_kwargs
from .vllm_engine import LOGPROBS_MODE, replay

logger = logging.getLogger(__name__)


class VLLMServerEngine:
    """The engine interface over TRL's ``VLLMClient`` (``client.generate(prompts, n=..., ...)``)."""

    def __init__(self, client, tokenizer, *, max_model_len: int | None = None, max_concurrent_requests: int = 64):
        self.client = client
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_concurrent_requests = max(1, max_concurrent_requests)
        self._budget_tokens = BudgetTokenCache(tokenizer)
        self._logprobs_kind: str | None = None

    @property
    def logprobs_kind(self) -> str:
        """``sampling`` when the server runs with ``processed_logprobs`` (as ``trl vllm-serve`` does); a server in a
        raw mode is refused (its log-probs would pass for the sampling distribution's); ``unavailable`` (NaN) when
        the server does not say."""
        if self._logprobs_kind is None:
            mode = None
            try:
                model_config = self.client.get_server_info()["model_config"]
                mode = model_config["logprobs_mode"]
                if self.max_model_len is None:  # the server's own context, so a budget never overruns it unseen
                    self.max_model_len = model_config.get("max_model_len")
            except Exception as err:  # noqa: BLE001 - no dev endpoints (VLLM_SERVER_DEV_MODE), or a stand-in client
                logger.warning("cannot read the vLLM server's logprobs_mode (%s): completions carry NaN log-probs "
                               "(logprobs_kind='unavailable'); start it with VLLM_SERVER_DEV_MODE=1, as TRL's server "
                               "mode needs anyway", str(err).splitlines()[0] if str(err) else type(err).__name__)
            mode = getattr(mode, "value", mode)
            if mode is not None and mode != LOGPROBS_MODE:
                raise ValueError(f"the vLLM server runs with --logprobs-mode {mode}; the budgeted engines need "
                                 f"{LOGPROBS_MODE} (the sampling distribution's log-probs, what TRL's importance "
                                 f"sampling expects): restart it with --logprobs-mode {LOGPROBS_MODE}")
            self._logprobs_kind = LOGPROBS_SAMPLING if mode == LOGPROBS_MODE else LOGPROBS_UNAVAILABLE
        return self._logprobs_kind

    @classmethod
    def from_url(cls, url: str, tokenizer, *, max_model_len: int | None = None,
                 connection_timeout: float = 0.0) -> "VLLMServerEngine":
        """Connect to a running ``trl vllm-serve`` at ``url`` (``http://host:port``)."""
        from trl.extras.vllm_client import VLLMClient

        return cls(VLLMClient(base_url=url, connection_timeout=connection_timeout), tokenizer,
                   max_model_len=max_model_len)

    def budget_tokens(self, budget: BudgetConfig) -> BudgetTokens:
        return self._budget_tokens(budget)

    def render(self, prompt: Prompt, budget: BudgetConfig) -> list[int]:
        return render_prompt(self.tokenizer, prompt, budget.start_thinking)

    def generate(self, prompts: Sequence[Prompt], budget: BudgetConfig | Sequence[BudgetConfig],
                 sampling: SamplingConfig = SamplingConfig(), *, num_samples: int = 1, progress: bool = False,
                 seed_step: int = 0, seed_process: int = 0) -> list[Completion]:
        """Completions in prompt then sample order. Prompts that render to the same ids and share a budget go in
        one request with ``n`` completions (TRL repeats each prompt ``num_generations`` times). With
        ``sampling.seed`` each request group gets ``derive_seed(seed, step=seed_step, process=seed_process,
        slot=group)``: no two groups, steps or processes share a seed."""
        budgets = budgets_per_prompt(prompts, budget, num_samples)
        kind = self.logprobs_kind
        jobs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
        rendered = [self.render(p, b) for p, b in zip(prompts, budgets)]
        groups: dict[tuple, list[int]] = {}
        for j, (p, _) in enumerate(jobs):
            groups.setdefault((tuple(rendered[p]), budgets[p]), []).append(j)
        out: list[Completion | None] = [None] * len(jobs)
        base = sampling.seed if sampling.seed is not None else fresh_seed()
        params = vllm_sampling_kwargs(sampling)
        requests = []
        for g, ((ids, b), members) in enumerate(groups.items()):
            tokens = self.budget_tokens(b)
            room = (self.max_model_len or 1 << 30) - len(ids)
            if room <= 0:
                raise ValueError(f"prompt of {len(ids)} tokens leaves no room in the server's context of "
                                 f"{self.max_model_len}")
            kwargs = {"vllm_xargs": budget_extra_args(b, tokens, sampling=sampling),
                      "seed": derive_seed(base, step=seed_step, process=seed_process, slot=g)}
            requests.append(dict(prompts=[list(ids)], n=len(members), logprobs=0,
                                 max_tokens=request_max_tokens(b, tokens, room), generation_kwargs=kwargs, **params))

        def send(request: dict) -> dict:
            return self.client.generate(**request)

        if len(requests) > 1 and self.max_concurrent_requests > 1:
            # TRL's client uses its requests.Session from several threads itself (image_features, chat).
            with ThreadPoolExecutor(min(len(requests), self.max_concurrent_requests)) as pool:
                results = list(pool.map(send, requests))
        else:
            results = [send(r) for r in requests]
        for ((ids, b), members), result in zip(groups.items(), results):
            tokens = self.budget_tokens(b)
            for j, completion_ids, logprobs in zip(members, result["completion_ids"], result["logprobs"]):
                flat = [lp[0] if isinstance(lp, (list, tuple)) else lp for lp in logprobs]
                part = replay(BudgetRow(b, tokens), completion_ids, flat)
                p, s = jobs[j]
                c = completion_of(part, None, self.tokenizer.decode, prompt_index=p, sample_index=s,
                                  prompt_ids=list(ids))
                c.logprobs_kind = kind
                if kind != LOGPROBS_SAMPLING:
                    c.logprobs = [float("nan")] * len(c.logprobs)
                out[j] = c
        return [c for c in out if c is not None]
