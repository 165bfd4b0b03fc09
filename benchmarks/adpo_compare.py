"""Paired comparison of two AdPO-experiment rows scored on the same check questions: accuracy difference (A − B)
clean and under APGD-CE at 4/255, with its standard error over the questions, per seed and averaged over seeds.

Run: ``python -m benchmarks.adpo_compare A1.json,A2.json,… B1.json,B2.json,…``, where each file is a
``check_<seed>.json`` written by ``python -m benchmarks.adpo_variant … --check SEED`` (or a row of a run's
``metrics.json`` ``confirm`` block, given as ``metrics.json:ROW``), the i-th of A paired with the i-th of B (one
loop seed each). The mean over seeds comes with the standard error of the per-seed differences (``n/a`` for one
pair). Two files are paired only if they scored the same questions: the same number, and the same question seed
where both record it (``question_seed`` in a check file, else the seed in its name ``check_<seed>.json``; a
``metrics.json`` row: its ``settings.confirm.seed``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from vlalign.evaluation.uncertainty import paired_difference, standard_error


def load_scores(spec: str) -> dict:
    """A check's per-question scores from ``check_<seed>.json`` or ``metrics.json:ROW`` (its ``confirm`` block),
    with ``question_seed`` filled in where the file or its name says which questions were scored (else None)."""
    path, row = spec, ""
    if not Path(spec).is_file() and ":" in spec:
        path, row = spec.rsplit(":", 1)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"adpo_compare: cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"adpo_compare: {path}: expected a JSON object, got {type(data).__name__}")
    seed = data.get("question_seed")
    if row:
        confirm = data.get("settings", {}).get("confirm", {})
        data = data.get("confirm", {}).get(row)
        if data is None:
            raise SystemExit(f"adpo_compare: {path} has no confirm.{row}")
        seed = confirm.get("seed")
    elif seed is None and (named := re.fullmatch(r"check_(\d+)\.json", Path(path).name)):
        seed = int(named.group(1))
    if "clean_scores" not in data or "robust_scores" not in data:
        raise SystemExit(f"adpo_compare: {spec} has no per-question scores (clean_scores, robust_scores)")
    if not data["clean_scores"] or len(data["clean_scores"]) != len(data["robust_scores"]):
        raise SystemExit(f"adpo_compare: {spec}: expected as many clean as robust scores, at least one, got "
                         f"{len(data['clean_scores'])} and {len(data['robust_scores'])}")
    return {**data, "question_seed": seed, "source": spec}


def compare(a: dict, b: dict) -> dict[str, tuple[float, float]]:
    """Paired (difference, standard error) of clean and robust accuracy, A − B, over the same questions."""
    if len(a["clean_scores"]) != len(b["clean_scores"]):
        raise SystemExit(f"adpo_compare: the two rows were scored on {len(a['clean_scores'])} and "
                         f"{len(b['clean_scores'])} questions; a paired comparison needs the same ones")
    seeds = (a.get("question_seed"), b.get("question_seed"))
    if None not in seeds and seeds[0] != seeds[1]:
        raise SystemExit(f"adpo_compare: {a.get('source', 'A')} and {b.get('source', 'B')} scored the questions of "
                         f"seeds {seeds[0]} and {seeds[1]}; a paired comparison needs the same questions")
    if None in seeds:
        print(f"adpo_compare: warning: {a.get('source', 'A')} / {b.get('source', 'B')}: no question seed recorded; "
              "cannot check that both scored the same questions", file=sys.stderr)
    return {key: paired_difference(a[f"{key}_scores"], b[f"{key}_scores"]) for key in ("clean", "robust")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="comma-separated check files of row A, one per seed")
    parser.add_argument("b", help="comma-separated check files of row B, in the same seed order")
    args = parser.parse_args(argv)
    a_specs, b_specs = args.a.split(","), args.b.split(",")
    if len(a_specs) != len(b_specs):
        parser.error(f"A has {len(a_specs)} files and B {len(b_specs)}; pair them one per seed")
    per_seed = [compare(load_scores(x), load_scores(y)) for x, y in zip(a_specs, b_specs)]
    for i, result in enumerate(per_seed):
        print(f"pair {i}: APGD 4/255 {100 * result['robust'][0]:+.1f} ± {100 * result['robust'][1]:.1f} pt, "
              f"clean {100 * result['clean'][0]:+.1f} ± {100 * result['clean'][1]:.1f} pt")
    for key, name in (("robust", "APGD 4/255"), ("clean", "clean")):
        values = [100 * result[key][0] for result in per_seed]
        error = f"{standard_error(values):.2f}" if len(values) > 1 else "n/a (one pair)"
        print(f"mean over {len(values)}: {name} {statistics.mean(values):+.2f} ± {error} pt")


if __name__ == "__main__":
    main()
