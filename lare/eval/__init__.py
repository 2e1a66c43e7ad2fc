"""Evaluation library: benchmark readers (VLMEvalKit TSV, lmms-eval / Hugging Face Parquet, the refocus traces),
answer extraction from free text, and scoring as the harnesses do it. See docs/benchmarks.md."""

from lare.eval.extract import answer_span, extract_choice, extract_yes_no, normalize_answer
from lare.eval.files import BenchmarkFileError
from lare.eval.readers import BENCHMARKS, EvalItem, MissingBenchmarkFiles, expand_circular, read_benchmark
from lare.eval.scoring import PROTOCOLS, flatten_metrics, item_results, score

__all__ = [
    "BENCHMARKS", "BenchmarkFileError", "EvalItem", "MissingBenchmarkFiles", "PROTOCOLS", "answer_span",
    "expand_circular", "extract_choice", "extract_yes_no", "flatten_metrics", "item_results", "normalize_answer",
    "read_benchmark", "score",
]
