"""`param_generation`: an `evaluate` metric summarising generated-network accuracies against trained ones.

    import evaluate
    metric = evaluate.load("hf_paramgen/metrics/param_generation")   # local folder, works offline
    metric.compute(predictions=[0.91, 0.88], references=[0.95, 0.94], retrieval=[0.55, 0.60])
    # {'generated_accuracy': 0.895, 'trained_accuracy': 0.945, 'fraction_of_trained': 0.947...,
    #  'retrieval_gap_closed': 0.857..., 'num_tasks': 2}

`predictions` are test accuracies of generated nets (best of k chosen on validation), `references` the
mean test accuracies of trained checkpoints of the same (task, architecture) pairs; the optional
`retrieval` gives the nearest-instruction checkpoint's accuracies, for the fraction of the
retrieval -> trained gap the generator closes: (generated - retrieval) / (trained - retrieval), on means.
`compute_param_generation` is the metric without `evaluate` (the module imports without it).
"""

from __future__ import annotations

from collections.abc import Sequence

_DESCRIPTION = "Generated-network accuracy as a fraction of trained accuracy, and the retrieval->trained gap closed."
_CITATION = "hf_paramgen (IGPG, arXiv 2504.02012; evaluation protocol after arXiv 2506.07998)"
_KWARGS_DESCRIPTION = """
Args:
    predictions: test accuracies of generated nets, one per (task, architecture).
    references: mean test accuracies of trained checkpoints for the same pairs.
    retrieval: optional test accuracies of the retrieval baseline for the same pairs.
Returns:
    generated_accuracy, trained_accuracy, fraction_of_trained, retrieval_gap_closed (None without retrieval
    or when trained == retrieval), num_tasks.
"""


def compute_param_generation(predictions: Sequence[float], references: Sequence[float],
                             retrieval: Sequence[float] | None = None) -> dict:
    """The metric itself, without `evaluate`."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"Expected equally many (>= 1) predictions and references, "
                         f"got {len(predictions)} and {len(references)}.")
    if retrieval is not None and len(retrieval) != len(predictions):
        raise ValueError(f"Expected one retrieval accuracy per prediction ({len(predictions)}), got {len(retrieval)}.")
    g, t = sum(map(float, predictions)) / len(predictions), sum(map(float, references)) / len(references)
    out = {"generated_accuracy": g, "trained_accuracy": t, "fraction_of_trained": g / t if t else None,
           "retrieval_gap_closed": None, "num_tasks": len(predictions)}
    if retrieval is not None:
        r = sum(map(float, retrieval)) / len(retrieval)
        out["retrieval_accuracy"] = r
        out["retrieval_gap_closed"] = (g - r) / (t - r) if abs(t - r) > 1e-12 else None
    return out


try:
    import datasets
    import evaluate
except ImportError:  # evaluate not installed: the function above still works
    evaluate = None

if evaluate is not None:

    @evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
    class ParamGeneration(evaluate.Metric):
        """`evaluate` wrapper around `compute_param_generation`."""

        def _info(self):
            return evaluate.MetricInfo(
                description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features({"predictions": datasets.Value("float32"),
                                            "references": datasets.Value("float32")}))

        def _compute(self, predictions, references, retrieval=None):
            return compute_param_generation(predictions, references, retrieval)
