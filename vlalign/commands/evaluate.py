"""``vlalign eval``: zero-shot accuracy (and written-label rate) of a model on a split or folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlalign.commands.common import (
    add_command, add_model_argument, add_out_argument, check_device, check_output, check_template, parse_seed,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "eval", "zero-shot accuracy on a mini-world split or an image folder",
                         ["vlalign eval --model mini --split typographic --n 600 --out runs/eval",
                          "vlalign eval --model runs/dpo --data my_folder --out runs/eval_folder"])
    add_model_argument(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", default="clean",
                        help="clean, typographic, nonreading (its control: random letters), matching; zeroshot-… "
                             "(held-out classes) or indomain-… prefixes")
    source.add_argument("--data", type=Path, help="an image folder with metadata.jsonl instead of a split")
    parser.add_argument("--n", type=int, default=1200, help="images to generate for a split")
    parser.add_argument("--seed", type=parse_seed, default=0, help="seed of the generated split")
    parser.add_argument("--template", default="a photo of a {}", help="class prompt template")
    parser.add_argument("--reference", default=None,
                        help="also report kl_to_reference: mean KL(π_model ‖ π_reference) of the zero-shot policies")
    parser.add_argument("--top-k", type=int, default=5, help="classes with their probability per image in predictions.jsonl")
    parser.add_argument("--allow-unknown-words", action="store_true",
                        help="evaluate even if class names are missing from a word-level model's vocabulary (warns)")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from vlalign.data.folder import load_image_folder
    from vlalign.data.mini_world import MiniWorld
    from vlalign.evaluation.predictions import write_jsonl, zero_shot_records
    from vlalign.evaluation.zero_shot import zero_shot_evaluate
    from vlalign.io import atomic_write_json
    from vlalign.models.embeddings import class_text_embeddings
    from vlalign.models.loading import load_model
    from vlalign.models.vocabulary import check_known_words
    from vlalign.reporting.failures import zero_shot_failure_grid
    from vlalign.reporting.run_report import run_info, write_report
    from vlalign.reporting.tables import markdown_table, zero_shot_report

    check_template(args.template, "--template")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1 (images of the generated split), got {args.n}")
    check_device(args.device)
    check_output(args.out, [("--model", args.model), ("--reference", args.reference), ("--data", args.data)],
                 nested_ok=("--model", "--reference"), kind="eval")
    model = load_model(args.model, args.device)
    if args.data is not None:
        images = load_image_folder(args.data, image_size=model.image_size)
        source = str(args.data)
    else:
        images = MiniWorld().sample(args.split, args.n, args.seed)
        source = f"mini-world split {args.split}"
    prompts = [args.template.format(c) for c in images.classnames]
    class_emb = class_text_embeddings(model, images.classnames, (args.template,),
                                      allow_unknown_words=args.allow_unknown_words,
                                      allow_option="--allow-unknown-words")
    reference = None
    if args.reference is not None:
        reference = load_model(args.reference, args.device)
        check_known_words(reference, prompts, "class prompts (--reference)", allow=args.allow_unknown_words,
                          allow_option="--allow-unknown-words")
    result = zero_shot_evaluate(model, images, class_emb)
    metrics = {"model": str(args.model), "source": source, "seed": args.seed, **result.metrics()}
    unknown = sorted(set(model.unknown_words(prompts)) | set(reference.unknown_words(prompts) if reference else []))
    if unknown:
        metrics["unknown_words"] = unknown
    if images.load_warnings:
        metrics["image_load_warnings"] = images.load_warnings
    if reference is not None:
        from vlalign.evaluation.divergence import mean_kl, policy_logits

        metrics["kl_to_reference"] = mean_kl(policy_logits(model, images, prompts), policy_logits(reference, images, prompts))
    records = zero_shot_records(images, result.logits, args.top_k)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "metrics.json", metrics)
    write_jsonl(args.out / "predictions.jsonl", records)
    grid = zero_shot_failure_grid(images, records, args.out / "failures.png", str(args.model))
    write_report(args.out, "eval", zero_shot_report(metrics, f"Zero-shot evaluation of {args.model}",
                                                    grid.name if grid else None),
                 run_info(seconds=time.perf_counter() - started))
    print(markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    print(f"\nper-image predictions: {args.out / 'predictions.jsonl'}")
    print(f"failures: {grid}" if grid else "failures: none, every image is classified correctly")
    return 0
