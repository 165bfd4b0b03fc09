"""Evaluate the towers trained by an ``vlalign experiment adpo`` run (full or partial) inside another mini VLM,
decoder untouched, with the run's own evaluation settings (what the README's transfer columns of the reduced run
were measured with, since that run had no transfer VLM).

Run: ``python benchmarks/adpo_transfer_eval.py RUN_DIR VLM OUT.json``, e.g.
``python benchmarks/adpo_transfer_eval.py runs/adpo_partial mini-vlm-large runs/adpo_transfer.json``.
"""
import copy, json, sys, time
import torch
torch.set_num_threads(1)
from safetensors.torch import load_file
from vlalign.experiments.adpo import EvalSet, evaluate_row
from vlalign.models.vlm_loading import load_vlm

run, large_spec, out = sys.argv[1], sys.argv[2], sys.argv[3]
metrics = json.load(open(f"{run}/metrics.json"))
settings = metrics["settings"]
data = EvalSet(settings["eval"])
large = load_vlm(large_spec)
result = {}
from vlalign.experiments.adpo import ROWS
import os
rows = [r for r in ROWS if r == "original" or os.path.isfile(f"{run}/runs/{r}/state/train_state.safetensors")]
print("rows", rows, flush=True)
for row in rows:
    began = time.perf_counter()
    model = copy.deepcopy(large)
    if row != "original":
        state = load_file(f"{run}/runs/{row}/state/train_state.safetensors")
        tower = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        model.vision.load_state_dict(tower)
    result[row] = evaluate_row(model, data)
    print(row, {k: result[row][k] for k in ("clean", "cider", "robust", "targeted_success")},
          f"{time.perf_counter() - began:.0f} s", flush=True)
    json.dump({"transfer_vlm": large_spec, "transfer": result}, open(out, "w"), indent=1)
