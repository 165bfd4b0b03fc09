"""Issue 11's targets for a run of ``vlalign experiment adpo``, from its metrics: which row is the most robust, and
whether the best AdPO row beats FARE (on the paired confirmation questions when the run has them), keeps its
robustness gain in the second VLM and costs at most 2.5 FARE steps. Pure functions of the run's dicts."""

from __future__ import annotations

from vlalign.evaluation.uncertainty import paired_difference

#: The ε of the issue's robustness target: the one the selection and the confirmation score.
CONFIRM_EPS = "4/255"


def check_question_seeds(settings: dict) -> None:
    """The validation questions that pick the best row (``select``) must be neither the table's (``eval``) nor the
    check's (``confirm``): a ``ValueError`` naming the clash otherwise."""
    used = {"eval.seed": settings["eval"]["seed"], "confirm.seed": settings["confirm"]["seed"]}
    if settings["select"]["questions"] > 0 and settings["select"]["seed"] in used.values():
        clash = [name for name, value in used.items() if value == settings["select"]["seed"]]
        raise ValueError(f"select.seed {settings['select']['seed']} is also {' and '.join(clash)}: the questions "
                         "that pick the best AdPO row must be other questions than the table's and the check's")


def most_robust(scores: dict[str, tuple[float, float]]) -> str | None:
    """The row whose (robust accuracy, clean accuracy) is highest: robust first, ties by clean, then the first."""
    return max(scores, key=lambda row: scores[row]) if scores else None


def targets(methods: dict, transfer: dict, steps: int, best: str | None, confirm: dict | None = None,
            selected_on: str = "table") -> dict:
    """The issue's targets, measured for the ``best`` AdPO row (picked on ``selected_on``): AdPO vs FARE (on the
    confirmation questions when ``confirm`` has both rows, paired, else on the table), transfer retention, step
    cost (also with the largest one-off precomputation of any row spread over ``steps``)."""
    if best is None:
        return {"best_adpo": None}
    fare = methods["fare"]
    gain = methods[best]["robust"][CONFIRM_EPS] - methods["original"]["robust"][CONFIRM_EPS]
    transferred_gain = (transfer[best]["robust"][CONFIRM_EPS] - transfer["original"]["robust"][CONFIRM_EPS]
                        if best in transfer else None)
    ratio = amortized = None
    if methods[best]["step_seconds"] and fare["step_seconds"]:
        ratio = methods[best]["step_seconds"] / fare["step_seconds"]
        precompute = max((row.get("precompute_seconds") or 0.0) for row in methods.values())
        amortized = (methods[best]["step_seconds"] + precompute / max(1, steps)) / fare["step_seconds"]
    table = {"robust_vs_fare_table": methods[best]["robust"][CONFIRM_EPS] - fare["robust"][CONFIRM_EPS],
             "clean_vs_fare_table": methods[best]["clean"] - fare["clean"]}
    if confirm and best in confirm and "fare" in confirm:
        robust, robust_se = paired_difference(confirm[best]["robust_scores"], confirm["fare"]["robust_scores"])
        clean, clean_se = paired_difference(confirm[best]["clean_scores"], confirm["fare"]["clean_scores"])
        decided = {"decided_on": "confirmation", "questions": confirm[best]["n"], "robust_vs_fare": robust,
                   "robust_vs_fare_se": robust_se, "clean_vs_fare": clean, "clean_vs_fare_se": clean_se}
    else:
        decided = {"decided_on": "table", "robust_vs_fare": table["robust_vs_fare_table"],
                   "clean_vs_fare": table["clean_vs_fare_table"]}
    return {
        "best_adpo": best,
        "selected_on": selected_on,
        **decided,
        **table,
        # a hair of slack: 0.522 − 0.492 is not exactly 0.03 in floating point
        "met_robust_and_clean": decided["robust_vs_fare"] >= 0.03 - 1e-9 and decided["clean_vs_fare"] >= -0.01 - 1e-9,
        "transfer_retention": transferred_gain / gain if gain > 0 and transferred_gain is not None else None,
        "step_cost_vs_fare": ratio,
        #: with the one-off pair precomputation spread over the run's steps
        "step_cost_vs_fare_amortized": amortized,
    }
