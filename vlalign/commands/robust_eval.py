"""``vlalign robust-eval``: clean and robust zero-shot accuracy under a list of attacks and ε, with checks."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlalign.commands.common import (
    DTYPES, add_command, add_dtype_argument, add_model_argument, add_out_argument, check_device, check_output,
    check_template, parse_seed,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "robust-eval", "robust zero-shot accuracy under attacks (metrics.json, report.md)",
                         "vlalign robust-eval --model mini --attack apgd-ce,pgd --eps 1/255,4/255 --out runs/robust-eval")
    add_model_argument(parser)
    parser.add_argument("--attack", default="apgd-ce,pgd",
                        help="comma-separated attacks: apgd-ce, apgd-dlr, apgd-t, pgd, pgd-l2, fgsm, square, transfer, "
                             "embedding, typographic")
    parser.add_argument("--eps", default="1/255,2/255,4/255",
                        help="comma-separated radii on [0, 1] images, e.g. 1/255,2/255,4/255 (ℓ2 attacks read them as ℓ2 radii)")
    parser.add_argument("--steps", type=int, default=20, help="iterations of the gradient attacks")
    parser.add_argument("--restarts", type=int, default=1, help="random restarts (batched)")
    parser.add_argument("--queries", type=int, default=1000, help="queries of the Square attack")
    parser.add_argument("--surrogate", default="mini", help="source model of the transfer attack")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", default="clean", help="mini-world split (clean, zeroshot-clean, ...)")
    source.add_argument("--data", type=Path, help="an image folder with metadata.jsonl instead of a split")
    parser.add_argument("--n", type=int, default=256, help="images to generate for a split")
    parser.add_argument("--seed", type=parse_seed, default=0, help="seed of the images and of the attacks")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward/attack batch")
    parser.add_argument("--template", default="a photo of a {}", help="class prompt template")
    parser.add_argument("--top-k", type=int, default=5, help="classes with their probability per image in predictions.jsonl")
    parser.add_argument("--allow-unknown-words", action="store_true",
                        help="evaluate even if class names are missing from a word-level model's vocabulary (warns)")
    parser.add_argument("--task", choices=("classify", "vqa", "caption"), default="classify",
                        help="classify: zero-shot accuracy of a contrastive model; vqa / caption: a generative VLM's "
                             "answers (exact match) or captions (CIDEr-D) on mini-world items or, with --data, a folder "
                             "written by `vlalign data export --split vqa|captions`")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation length (vqa 8, caption 24)")
    add_dtype_argument(parser)
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    started = time.perf_counter()

    from vlalign.attacks.registry import split_attack_names
    from vlalign.attacks.threat_model import parse_eps
    from vlalign.data.folder import load_image_folder
    from vlalign.data.mini_world import MiniWorld
    from vlalign.evaluation.predictions import robust_records, write_jsonl
    from vlalign.evaluation.robust import robust_evaluate
    from vlalign.io import atomic_write_json
    from vlalign.models.embeddings import class_text_embeddings
    from vlalign.reporting.failures import robust_failure_grid
    from vlalign.reporting.robust import robust_report, robust_table
    from vlalign.reporting.run_report import run_info, write_report
    from vlalign.models.loading import load_model

    if args.task != "classify":
        return _run_generative(args)
    check_template(args.template, "--template")
    attacks = split_attack_names(args.attack)
    eps = [parse_eps(e) for e in args.eps.split(",") if e.strip()]
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.dtype != "float32":
        raise ValueError(f"--dtype {args.dtype} is for generative VLMs (--task vqa or caption); a contrastive model "
                         "is evaluated in float32")
    check_device(args.device)
    check_output(args.out, [("--model", args.model), ("--surrogate", args.surrogate), ("--data", args.data)],
                 nested_ok=("--model", "--surrogate"), kind="robust-eval")
    torch.manual_seed(args.seed)
    model = load_model(args.model, args.device)
    if args.data is not None:
        images = load_image_folder(args.data, image_size=model.image_size)
    else:
        images = MiniWorld().sample(args.split, args.n, args.seed)
    class_emb = class_text_embeddings(model, images.classnames, (args.template,),
                                      allow_unknown_words=args.allow_unknown_words,
                                      allow_option="--allow-unknown-words")
    result = robust_evaluate(model, images, attacks, eps, steps=args.steps, restarts=args.restarts,
                             queries=args.queries, batch_size=args.batch_size, seed=args.seed,
                             class_embeddings=class_emb, templates=(args.template,), surrogate=args.surrogate,
                             progress=True)
    result.settings = {"model": str(args.model), "source": str(args.data) if args.data else f"mini-world split {args.split}",
                       **result.settings}
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = result.metrics()
    if images.load_warnings:
        metrics["image_load_warnings"] = images.load_warnings
    atomic_write_json(args.out / "metrics.json", metrics)
    write_jsonl(args.out / "predictions.jsonl", robust_records(images, result, args.top_k))
    grid = robust_failure_grid(images, result, args.out / "failures.png", str(args.model))
    report = robust_report(metrics, f"Robust evaluation of {args.model}", failure_grid=grid.name if grid else None)
    write_report(args.out, "robust-eval", report, run_info(seconds=time.perf_counter() - started))
    print(f"clean accuracy: {result.clean_accuracy:.3f}")
    print(robust_table(metrics))
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"\nper-image predictions: {args.out / 'predictions.jsonl'}")
    print(f"adversarial images that fool the model: {grid}" if grid else "no attack fooled the model")
    print(f"report: {args.out / 'report.md'}")
    return 0


def _run_generative(args: argparse.Namespace) -> int:
    import torch

    started = time.perf_counter()

    from vlalign.attacks.threat_model import parse_eps
    from vlalign.data.vqa import MiniCaptions, MiniVQA
    from vlalign.data.vqa_formats import load_captions_folder, load_vqa_folder
    from vlalign.evaluation.vlm_robust import robust_evaluate_vlm
    from vlalign.io import atomic_write_json
    from vlalign.models.vlm_loading import load_vlm
    from vlalign.reporting.run_report import run_info, write_report
    from vlalign.reporting.vlm_robust import vlm_robust_report, vlm_robust_table

    eps = [parse_eps(e) for e in args.eps.split(",") if e.strip()]
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    check_device(args.device)
    check_output(args.out, [("--model", args.model), ("--data", args.data)], nested_ok=("--model",),
                 kind="robust-eval-vlm")
    torch.manual_seed(args.seed)
    spec = "mini-vlm" if args.model == "mini" else args.model
    model = load_vlm(spec, args.device, dtype=DTYPES[args.dtype])
    if args.task == "vqa":
        dataset = load_vqa_folder(args.data, model.image_size) if args.data else MiniVQA(args.n, args.seed)
        references = [[dataset[i]["answer"]] for i in range(len(dataset))]
    else:
        dataset = load_captions_folder(args.data, model.image_size) if args.data else MiniCaptions(args.n, args.seed)
        references = [dataset.references(i) for i in range(len(dataset))]
    items = [dataset[i] for i in range(len(dataset))]
    types = [item["question_type"] for item in items] if args.task == "vqa" else None
    result = robust_evaluate_vlm(model, torch.stack([item["pixels"] for item in items]),
                                 [item["prompt"] for item in items], references, args.task, args.attack, eps,
                                 steps=args.steps, restarts=args.restarts, queries=args.queries,
                                 batch_size=args.batch_size, seed=args.seed, max_new_tokens=args.max_new_tokens,
                                 question_types=types, progress=True)
    source = str(args.data) if args.data else f"mini-world {args.task} items, seed {args.seed}"
    result.settings = {"model": spec, "source": source, **result.settings}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "metrics.json", result.metrics())
    write_report(args.out, "robust-eval-vlm", vlm_robust_report(result, f"Robust {args.task} evaluation of {spec}"),
                 run_info(seconds=time.perf_counter() - started))
    print(vlm_robust_table(result))
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"\nreport: {args.out / 'report.md'}")
    return 0
