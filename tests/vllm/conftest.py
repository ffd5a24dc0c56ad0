"""The vLLM tests: run for real in the environment `make vllm-env` creates (.venv-vllm, vLLM's CPU build); skipped
with a clear reason anywhere vLLM is absent. `make test` runs them there."""

import os

import pytest

# In-process engine (start-up in seconds, not tens) and one OpenMP thread (20x faster on a small CPU model).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

try:
    import vllm  # noqa: F401

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed here: `make vllm-env` builds .venv-vllm, and `make test` "
                                   "runs these tests there")
    for item in items:
        if "tests/vllm" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_engine(toy_dir):
    from elastic_reasoning.generation.vllm_engine import VLLMEngine

    return VLLMEngine.from_pretrained(str(toy_dir), dtype="float32", max_model_len=512)
