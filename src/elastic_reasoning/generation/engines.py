"""Pick and load a generation engine by backend name: what the CLI, evaluation and serving share.

``transformers`` (any Hugging Face causal LM, CPU or one GPU; streaming and cancellation), ``vllm`` (vLLM's offline
engine with the budget logits processor; GPUs, or vLLM's CPU build), ``vllm-server`` (a running ``trl vllm-serve``
through TRL's client) and ``remote`` (any OpenAI-compatible completions endpoint, phase by phase). Every engine
implements :class:`~.engine.Engine` and returns the same :class:`~.record.Completion` records.
"""

from __future__ import annotations

BACKENDS = ("transformers", "vllm", "vllm-server", "remote")


def load_engine(model: str | None, backend: str = "transformers", *, dtype: str | None = None,
                device: str | None = None, max_batch_size: int = 64, endpoint: str | None = None,
                tokenizer: str | None = None, api_key: str | None = None, context_length: int | None = None,
                **vllm_kwargs):
    """The engine for ``model`` on ``backend``.

    ``max_batch_size`` bounds the transformers engine's batches (and the remote engine's parallel requests; vLLM
    schedules its own); ``vllm_kwargs`` go to ``vllm.LLM``. ``remote`` and ``vllm-server`` need ``endpoint`` (the
    server's URL). ``vllm-server`` renders prompts with a local tokenizer from ``tokenizer`` (default: ``model``);
    ``remote`` takes ``model`` as the upstream's model name (None: its first model) and loads a tokenizer only from
    ``tokenizer`` (without one, string prompts are sent as raw text).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend in ("remote", "vllm-server"):
        if not endpoint:
            raise ValueError(f"the {backend} backend needs an endpoint (the server's URL)")
        # remote: the tokenizer only where one is named (``model`` is the upstream's name, maybe not local)
        source = tokenizer if backend == "remote" else (tokenizer or model)
        tok = _load_tokenizer(source, backend=backend)
        if backend == "remote":
            from .remote_engine import RemoteEngine

            return RemoteEngine(endpoint, model=model, tokenizer=tok, api_key=api_key, context_length=context_length,
                                max_parallel=max_batch_size)
        from .vllm_server_engine import VLLMServerEngine

        base = endpoint.rstrip("/").removesuffix("/v1")
        return VLLMServerEngine.from_url(base, tok, max_model_len=context_length)
    if model is None:
        raise ValueError(f"the {backend} backend needs a model")
    if backend == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained(model, dtype=dtype, device=device, max_batch_size=max_batch_size)
    import os

    # vLLM logs to stdout by default; this project's commands print their results there (--json).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ValueError("the vllm backend needs vLLM: `pip install elastic-reasoning[vllm]` on a GPU machine, "
                         "or `make vllm-env` for vLLM's CPU build in .venv-vllm (then use .venv-vllm/bin/"
                         "elastic-reasoning)") from None
    if device not in (None, "cpu") and not str(device).startswith("cuda"):
        raise ValueError(f"the vllm backend picks its own device; got --device {device}")
    from .vllm_engine import VLLMEngine

    if dtype is None:  # as the transformers engine: float32 on the CPU, the checkpoint's own dtype on a GPU
        import torch

        dtype = "auto" if torch.cuda.is_available() else "float32"
    return VLLMEngine.from_pretrained(model, dtype=dtype, **vllm_kwargs)


def _load_tokenizer(source: str | None, *, backend: str):
    """The local tokenizer a server-backed engine renders prompts with (None where none is named, for remote)."""
    if source is None:
        if backend == "remote":
            return None
        raise ValueError(f"the {backend} backend needs a local tokenizer to render prompts (a model or --tokenizer)")
    from transformers import AutoTokenizer

    from ..models import resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(source))
    except (OSError, ValueError) as err:
        raise ValueError(f"the {backend} backend needs a local tokenizer to render prompts: cannot load one from "
                         f"{source!r} ({str(err).splitlines()[0]}); pass --tokenizer PATH") from None
