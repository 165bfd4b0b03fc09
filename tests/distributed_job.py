"""Training jobs the data-parallel test runs twice: once in one process, once under ``accelerate launch`` with 2.

``python tests/distributed_job.py OUT`` trains full-tower DPO, KTO, FARE and adversarial AdvLoRA on a tiny MiniCLIP with a global
batch of 16 and SGD (so that only the summation order of floats differs between the runs), and the main process
saves each trained image tower to ``OUT/<job>.safetensors``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from vlalign.data.datasets import TensorImageDataset
from vlalign.data.mini_world import MiniWorld, vocabulary
from vlalign.data.preference import typographic_preference_data
from vlalign.io import save_tensors
from vlalign.models.mini_clip import MiniCLIP, MiniCLIPConfig
from vlalign.training import distributed
from vlalign.training.loop import fit
from vlalign.training.methods.preference import ContrastivePreference, PreferenceConfig
from vlalign.training.methods.robust import RobustConfig, RobustFinetune
from vlalign.training.train_config import TrainConfig

JOBS = ("dpo", "kto", "fare", "advlora")
LOOP = TrainConfig(steps=4, batch_size=16, optimizer="sgd", lr=0.5, warmup_fraction=0.0, log_every=1)
#: Per job: the learning rate, and β of the preference objectives (a large β makes KTO's z_ref matter).
SETTINGS = {"dpo": (0.5, 0.5), "kto": (0.5, 8.0), "fare": (0.05, None), "advlora": (0.5, None)}


def tiny_model() -> MiniCLIP:
    torch.manual_seed(0)
    return MiniCLIP(MiniCLIPConfig(image_size=32, stem_channels=(8, 16), vision_width=16, vision_layers=1,
                                   vision_heads=2, text_width=16, text_layers=1, text_heads=2, embed_dim=16,
                                   vocab=vocabulary())).eval()


def build(job: str):
    model = tiny_model()
    if job == "advlora":
        from vlalign.data.retrieval_world import RetrievalWorld
        from vlalign.training.methods.advlora import AdvLoRAConfig, AdvLoRAMethod

        return AdvLoRAMethod(model, RetrievalWorld().sample("train", 48, 3), AdvLoRAConfig(rank=2, eps="8/255", attack_steps=2))
    if job == "fare":
        images = MiniWorld().sample("clean", 48, 3)
        data = TensorImageDataset(images.images, label=images.labels)
        return RobustFinetune(model, data, images.classnames, RobustConfig(method="fare", eps="8/255", attack_steps=2))
    pref, reg = typographic_preference_data(48, 48, seed=5)
    return ContrastivePreference(model, TensorImageDataset(pref.images, chosen=pref.chosen, rejected=pref.rejected),
                                 pref.prompts, TensorImageDataset(reg.images, label=reg.labels),
                                 PreferenceConfig(method=job, trainable="full", beta=SETTINGS[job][1], lam=1.0))


def run_jobs(out: Path) -> dict[str, list[dict]]:
    """Train every job; the main process writes the weights. Returns each job's logged history."""
    histories = {}
    for job in JOBS:
        result = fit(build(job), replace(LOOP, lr=SETTINGS[job][0]), progress=False)
        histories[job] = result.history
        if distributed.rank() == 0:
            save_tensors(out / f"{job}.safetensors", result.model.image_encoder.state_dict())
    return histories


if __name__ == "__main__":
    torch.set_num_threads(1)
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, history in run_jobs(target).items():
        if distributed.rank() == 0:
            print(name, [round(row["loss"], 6) for row in history], flush=True)
    distributed.shutdown()
