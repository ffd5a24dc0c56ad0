"""Evaluation: budget sweeps of the paper's methods on its benchmarks, resumable, with summaries, tables and plots.

* ``methods.py``: elastic / truncate / s1 / l1 / none as budget configs and prompt changes;
* ``sweep.py``: independent runs per budget, or shared thinking (one trace cut at every budget; exact under greedy);
* ``store.py``: the JSONL results store (resume, Ctrl-C safe, no duplicates);
* ``scoring.py``: math reward, code reward, the synthetic task's strict scorer;
* ``metrics.py``: pass@1 averaged over samples, unbiased pass@k, the summary records and table;
* ``runner.py``: ``run_eval(EvalConfig)``, what ``elastic-reasoning eval`` calls;
* ``report.py``: ``write_report(dirs)``, what ``elastic-reasoning report`` calls.

Backends: the transformers engine (default), vLLM (``backend="vllm"``, ``--backend vllm``) and an OpenAI-compatible
``--endpoint`` (see docs/evaluation.md).
"""

from .methods import METHODS, MethodPoint, method_points
from .metrics import format_table, pass_at_k, summarize
from .runner import EvalConfig, EvalResult, load_records, run_eval

__all__ = ["METHODS", "EvalConfig", "EvalResult", "MethodPoint", "format_table", "load_records", "method_points",
           "pass_at_k", "run_eval", "summarize"]
