"""Evaluate the towers trained by an ``vlalign experiment adpo`` run (full or partial) inside another mini VLM,
decoder untouched, with the run's own evaluation settings (what the README's transfer columns of the reduced run
were measured with, since that run had no transfer VLM).

Run: ``python benchmarks/adpo_transfer_eval.py RUN_DIR VLM OUT.json``, e.g.
``python benchmarks/adpo_transfer_eval.py runs/adpo_partial mini-vlm-large runs/adpo_transfer.json``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

from vlalign.experiments.adpo import ROWS, EvalSet, evaluate_row
from vlalign.models.vlm_loading import load_vlm


def main() -> None:
    run, spec, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    settings = json.loads(open(f"{run}/metrics.json").read())["settings"]
    data = EvalSet(settings["eval"])
    target = load_vlm(spec)
    rows = [r for r in ROWS if r == "original" or os.path.isfile(f"{run}/runs/{r}/state/train_state.safetensors")]
    result = {}
    for row in rows:
        began = time.perf_counter()
        model = copy.deepcopy(target)
        if row != "original":  # the run state holds the trained tower as "model.*"
            state = load_file(f"{run}/runs/{row}/state/train_state.safetensors")
            model.vision.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        result[row] = evaluate_row(model, data)
        print(row, {k: result[row][k] for k in ("clean", "cider", "robust", "targeted_success")},
              f"{time.perf_counter() - began:.0f} s", flush=True)
        with open(out, "w") as handle:
            json.dump({"transfer_vlm": spec, "transfer": result}, handle, indent=1)


if __name__ == "__main__":
    main()
