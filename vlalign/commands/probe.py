"""``vlalign probe``: how linearly recoverable the object is from a model's frozen image features."""

from __future__ import annotations

import argparse
import time

from vlalign.commands.common import (
    add_command, add_model_argument, add_out_argument, check_device, check_output, parse_seed,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "probe", "linear probe of the object class on frozen features of typographic, clean "
                                       "and non-reading-control images",
                         ["vlalign probe --model mini --out runs/probe",
                          "vlalign probe --model runs/dpo --n-train 1200 --n-test 600 --out runs/probe_dpo"])
    add_model_argument(parser)
    parser.add_argument("--n-train", type=int, default=2400, help="images per split the probe is trained on")
    parser.add_argument("--n-test", type=int, default=1200, help="images per split it is tested on (another draw)")
    parser.add_argument("--train-seed", type=parse_seed, default=7100, help="seed of the training draw")
    parser.add_argument("--test-seed", type=parse_seed, default=7200, help="seed of the test draw")
    parser.add_argument("--l2", type=float, default=None,
                        help="L2 penalty on the probe's weights (whitened features); default: chosen per split from "
                             "1e-3, 1e-2, 1e-1, 1 on a quarter of the training draw")
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.n_train < 1 or args.n_test < 1:
        raise ValueError(f"--n-train and --n-test must be >= 1, got {args.n_train} and {args.n_test}")
    if args.l2 is not None and args.l2 < 0:
        raise ValueError(f"--l2 must be >= 0, got {args.l2}")
    if args.train_seed == args.test_seed:
        raise ValueError("--train-seed and --test-seed must differ: the probe is tested on another draw")
    check_device(args.device)
    check_output(args.out, [("--model", args.model)], nested_ok=("--model",), kind="probe")

    from vlalign.evaluation.probe import object_probe
    from vlalign.io import atomic_write_json
    from vlalign.models.loading import load_model
    from vlalign.reporting.probe import plot_probe, probe_report, targets_met
    from vlalign.reporting.run_report import run_info, write_report
    from vlalign.reporting.tables import markdown_table, percent

    model = load_model(args.model, args.device)
    splits = object_probe(model, n_train=args.n_train, n_test=args.n_test, train_seed=args.train_seed,
                          test_seed=args.test_seed, l2=args.l2)
    metrics = {"model": str(args.model), "splits": splits,
               "reading_effect": splits["nonreading"]["zero_shot"] - splits["typographic"]["zero_shot"],
               "settings": {"n_train": args.n_train, "n_test": args.n_test, "train_seed": args.train_seed,
                            "test_seed": args.test_seed, "l2": args.l2}}
    metrics["targets_met"] = targets_met(metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "metrics.json", metrics)
    plot_probe(metrics, args.out / "probe.png")
    write_report(args.out, "probe", probe_report(metrics), run_info(seconds=time.perf_counter() - started))
    print(markdown_table(["split", "zero-shot", "probe"],
                         [[name, percent(r["zero_shot"]), percent(r["probe"])] for name, r in splits.items()]))
    print(f"reading effect (non-reading − typographic, zero-shot): {100 * metrics['reading_effect']:+.1f} points")
    print(f"report: {args.out / 'report.md'}")
    return 0
