"""``vlalign eval``: zero-shot accuracy (and written-label rate) of a model on a split or folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlalign.commands.common import add_model_argument, add_out_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="zero-shot accuracy on a mini-world split or an image folder")
    add_model_argument(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", default="clean",
                        help="clean, typographic, matching; zeroshot-… (held-out classes) or indomain-… prefixes")
    source.add_argument("--data", type=Path, help="an image folder with metadata.jsonl instead of a split")
    parser.add_argument("--n", type=int, default=1200, help="images to generate for a split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="a photo of a {}", help="class prompt template")
    parser.add_argument("--reference", default=None,
                        help="also report kl_to_reference: mean KL(π_model ‖ π_reference) of the zero-shot policies")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.data.folder import load_image_folder
    from vlalign.data.mini_world import MiniWorld
    from vlalign.evaluation.zero_shot import zero_shot_evaluate
    from vlalign.models.embeddings import class_text_embeddings
    from vlalign.io import atomic_write_json
    from vlalign.models.loading import load_model
    from vlalign.reporting.tables import markdown_table

    if "{}" not in args.template:
        raise ValueError(f"--template must contain '{{}}' where the class name goes, got {args.template!r}")
    model = load_model(args.model, args.device)
    if args.data is not None:
        images = load_image_folder(args.data, image_size=model.image_size)
        source = str(args.data)
    else:
        images = MiniWorld().sample(args.split, args.n, args.seed)
        source = f"mini-world split {args.split}"
    class_emb = class_text_embeddings(model, images.classnames, (args.template,))
    metrics = {"model": str(args.model), "source": source, "seed": args.seed,
               **zero_shot_evaluate(model, images, class_emb).metrics()}
    if args.reference is not None:
        from vlalign.evaluation.divergence import mean_kl, policy_logits

        reference = load_model(args.reference, args.device)
        prompts = [args.template.format(c) for c in images.classnames]
        metrics["kl_to_reference"] = mean_kl(policy_logits(model, images, prompts), policy_logits(reference, images, prompts))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "metrics.json", metrics)
    print(markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    return 0
