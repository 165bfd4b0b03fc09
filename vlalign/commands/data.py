"""``vlalign data export`` and ``vlalign data typographic``: the mini world and typographic attacks on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlalign.commands.common import add_out_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="export mini-world splits; render typographic attacks onto image folders")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    export = data_sub.add_parser("export", help="write a mini-world split as images + metadata.jsonl")
    export.add_argument("--split", default="typographic",
                        help="pretrain, clean, typographic, matching, zeroshot-…, indomain-…; or vqa (VQAv2 format) "
                             "or captions (COCO-captions format) for generative VLMs")
    export.add_argument("--n", type=int, default=240)
    export.add_argument("--seed", type=int, default=0)
    add_out_argument(export)
    export.set_defaults(handler=run_export)

    typo = data_sub.add_parser("typographic", help="write a random other class name onto every image of a folder")
    typo.add_argument("--data", type=Path, required=True, help="image folder with metadata.jsonl")
    typo.add_argument("--instances", type=int, default=1, help="words written per image")
    typo.add_argument("--seed", type=int, default=0)
    add_out_argument(typo)
    typo.set_defaults(handler=run_typographic)


def run_export(args: argparse.Namespace) -> int:
    from vlalign.data.folder import export_image_set
    from vlalign.data.mini_world import MiniWorld

    if args.split in ("vqa", "captions"):
        return _export_generative(args)

    images = MiniWorld().sample(args.split, args.n, args.seed)
    export_image_set(images, args.out, progress=True)
    print(f"wrote {len(images)} images of split {args.split!r} to {args.out}")
    return 0


def run_typographic(args: argparse.Namespace) -> int:
    from vlalign.data.folder import (
        export_image_set, load_image_folder,
    )
    from vlalign.data.image_set import ImageSet
    from vlalign.data.typographic import typographic_attack

    source = load_image_folder(args.data)
    rng = np.random.default_rng(args.seed)
    attacked, written = [], []
    for i in range(len(source)):
        image = Image.fromarray(source.images[i].permute(1, 2, 0).numpy())
        label = source.classnames[int(source.labels[i])]
        out, word = typographic_attack(image, label, source.classnames, rng, n_instances=args.instances)
        attacked.append(torch.from_numpy(np.array(out)).permute(2, 0, 1))  # a writable copy of the PIL buffer
        written.append(source.classnames.index(word))
    result = ImageSet(torch.stack(attacked), source.labels, source.classnames, torch.tensor(written), source.captions)
    export_image_set(result, args.out, progress=True)
    print(f"wrote {len(result)} typographically attacked images to {args.out}")
    return 0


def _export_generative(args: argparse.Namespace) -> int:
    from vlalign.data.vqa import MiniCaptions, MiniVQA
    from vlalign.data.vqa_formats import export_captions, export_vqa

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.split == "vqa":
        export_vqa(MiniVQA(args.n, args.seed), args.out, progress=True)
        print(f"wrote {args.n} mini-world questions in VQAv2 format (questions.json, annotations.json, images/) to {args.out}")
    else:
        export_captions(MiniCaptions(args.n, args.seed), args.out, progress=True)
        print(f"wrote {args.n} captioned mini-world images in COCO-captions format (captions.json, images/) to {args.out}")
    return 0
