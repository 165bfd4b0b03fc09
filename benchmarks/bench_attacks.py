"""Attack speed: images·steps per second of PGD and APGD on MiniCLIP and on a config-built transformers CLIP.

Run: ``python benchmarks/bench_attacks.py [--batch 64] [--steps 10] [--restarts 1] [--repeats 3] [--device cpu]
[--threads N]``.

Each attack step should cost one forward and one backward pass of the batch and nothing more. The floor is
measured in the same run: a bare forward + input-gradient backward of the same batch (``fwd+bwd`` row). The
ratio column is attack throughput over that floor; close to 1.0 means no hidden extra passes (APGD's final
forward-only evaluation and its bookkeeping cost a few percent). The transformers CLIP is built from a small
``CLIPConfig`` (no download) and attacked through :class:`vlalign.models.hf_clip.HFCLIP` on random class
embeddings: only its image tower runs.
"""

from __future__ import annotations

import argparse
import time

import torch

from vlalign.attacks.apgd import APGD
from vlalign.attacks.objectives import LogitObjective
from vlalign.attacks.pgd import PGD
from vlalign.reporting.tables import markdown_table


def tiny_hf_clip(image_size: int = 64, patch: int = 8, width: int = 128, layers: int = 4):
    """A randomly initialized transformers CLIP of the given vision size, wrapped as a ContrastiveModel."""
    from transformers import CLIPConfig, CLIPModel

    from vlalign.models.hf_clip import HFCLIP

    config = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=image_size, patch_size=patch, hidden_size=width, intermediate_size=4 * width,
                           num_hidden_layers=layers, num_attention_heads=4),
        projection_dim=64,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    return HFCLIP(model, tokenizer=None, image_mean=(0.48145466, 0.4578275, 0.40821073),
                  image_std=(0.26862954, 0.26130258, 0.27577711), resize_to=image_size, crop_size=image_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_throughput(model, images: torch.Tensor, repeats: int) -> float:
    """Images per second of one forward + input-gradient backward (parameters frozen, eval mode)."""
    from vlalign.attacks.base import attack_mode

    with attack_mode(model):
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(model.encode_image(x).sum(), x)  # warm-up
        _sync(images.device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.autograd.grad(model.encode_image(x).sum(), x)
        _sync(images.device)
    return images.shape[0] * repeats / (time.perf_counter() - start)


def attack_throughput(attack, objective, images: torch.Tensor, steps: int, restarts: int) -> float:
    """Images·steps per second of ``attack`` (restarts count as images: they share each step's batch)."""
    _sync(images.device)
    start = time.perf_counter()
    attack(objective, images, seed=0)
    _sync(images.device)
    return images.shape[0] * restarts * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the best is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from vlalign.models.loading import load_model

    models = {"MiniCLIP (64px)": load_model("mini", device),
              "transformers CLIP (64px, ViT 4x128, config-built)": tiny_hf_clip().to(device)}
    eps = 4 / 255
    rows = []
    for label, model in models.items():
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(args.batch, 3, 64, 64, generator=generator).to(device)
        labels = torch.randint(0, 12, (args.batch,), generator=generator)
        candidates = torch.nn.functional.normalize(torch.randn(12, model.embed_dim, generator=generator), dim=-1)
        objective = LogitObjective(model, candidates.to(device), labels)
        attacks = {"PGD": PGD(eps, steps=args.steps, restarts=args.restarts),
                   "APGD-CE": APGD(eps, steps=args.steps, restarts=args.restarts, loss="ce")}
        attack_throughput(attacks["PGD"], objective, images, args.steps, args.restarts)  # warm-up
        # Interleaved repeats, best of each: on a shared machine the slowest runs measure the neighbours.
        best = {"floor": 0.0, **{name: 0.0 for name in attacks}}
        for _ in range(args.repeats):
            best["floor"] = max(best["floor"], floor_throughput(model, images, args.steps))
            for name, attack in attacks.items():
                best[name] = max(best[name], attack_throughput(attack, objective, images, args.steps, args.restarts))
        rows.append([label, "fwd+bwd (floor)", f"{best['floor']:.0f}", "1.00"])
        for name in attacks:
            rows.append([label, name, f"{best[name]:.0f}", f"{best[name] / best['floor']:.2f}"])
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device {device} (threads {threads}); batch {args.batch}, {args.steps} steps, {args.restarts} restart(s), "
          f"eps 4/255, best of {args.repeats}\n")
    print(markdown_table(["model", "attack", "images·steps/s", "ratio to fwd+bwd"], rows))


if __name__ == "__main__":
    main()
