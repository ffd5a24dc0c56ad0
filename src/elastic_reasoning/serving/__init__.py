"""An OpenAI-compatible server where every request carries its own thinking and solution budgets.

``app.py`` (FastAPI endpoints, running under uvicorn), ``protocol.py`` (request/response models; every budget name a
client sends mapped onto one BudgetConfig), ``continuous_batcher.py`` (a local model: requests join the running decoder between steps; bounds, cancellation),
``async_batcher.py`` (vLLM's async engine, which batches itself), ``batcher.py`` (whole batches: an upstream
engine, or ``--batching static``), ``stream.py``
(tokens -> thinking/solution text deltas, stop strings), ``metrics.py`` (Prometheus text). Upstream mode puts the
same server in front of another OpenAI-compatible server through ``generation/remote_engine.py``.
See docs/serving.md.
"""

from .app import (BackgroundServer, ServedModel, ServerConfig, build_local_model, build_upstream_model, build_vllm_model,
                  create_app, run_server)
from .protocol import DEFAULT_EFFORT_TABLE, EffortBudget, ModelDefaults, parse_effort_table

__all__ = [
    "BackgroundServer",
    "DEFAULT_EFFORT_TABLE",
    "EffortBudget",
    "ModelDefaults",
    "ServedModel",
    "ServerConfig",
    "build_local_model",
    "build_upstream_model",
    "build_vllm_model",
    "create_app",
    "parse_effort_table",
    "run_server",
]
