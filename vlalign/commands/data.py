"""``vlalign data export`` and ``vlalign data typographic``: the mini world and typographic attacks on disk."""

from __future__ import annotations

import argparse
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlalign.commands.common import add_command, add_out_argument, check_output, parse_seed

OVERWRITE_HELP = ("replace a dataset already in --out: its metadata.jsonl, classes.json, dataset.json, "
                  "questions.json, annotations.json, captions.json and images/ are removed first")


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "data", "export mini-world splits; render typographic attacks onto image folders",
                         ["vlalign data export --split typographic --n 240 --out data/typo",
                          "vlalign data typographic --data my_photos --out my_photos_attacked"])
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    export = add_command(data_sub, "export", "write a mini-world split as images + metadata.jsonl",
                         "vlalign data export --split typographic --n 240 --seed 0 --out data/typo")
    export.add_argument("--split", default="typographic",
                        help="pretrain, clean, typographic, nonreading, matching, zeroshot-…, indomain-…; or retrieval (train, val "
                             "and test images of the retrieval world as a Karpathy-split dataset.json), retrieval-test, …; or vqa (VQAv2 format) or captions (COCO-captions "
                             "format) for generative VLMs")
    export.add_argument("--n", type=int, default=240, help="number of images (per part, for --split retrieval)")
    export.add_argument("--seed", type=parse_seed, default=0, help="seed of the images")
    export.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    add_out_argument(export)
    export.set_defaults(handler=run_export)

    typo = add_command(data_sub, "typographic", "write a random other class name onto every image of a folder",
                       "vlalign data typographic --data data/clean --instances 2 --out data/clean_attacked",
                       description="Write a random other class name onto every image of a folder. The input folder is "
                                   "never modified: --out must be a different folder, outside it.")
    typo.add_argument("--data", type=Path, required=True, help="image folder with metadata.jsonl")
    typo.add_argument("--instances", type=int, default=1, help="words written per image")
    typo.add_argument("--seed", type=parse_seed, default=0, help="seed of the words' choice, font, size and place")
    typo.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    add_out_argument(typo)
    typo.set_defaults(handler=run_typographic)


def check_dataset_output(args: argparse.Namespace) -> None:
    """Refuse, before any work, an ``--out`` that holds a run of any kind, or a dataset unless ``--overwrite``."""
    from vlalign.data.folder import existing_dataset_entries

    check_output(args.out, [("--data", getattr(args, "data", None))], kind="data")
    found = existing_dataset_entries(args.out) if args.out.is_dir() else []
    if found and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds a dataset ({', '.join(found)}); writing another there would "
                         "overwrite it and leave its extra images behind: choose another folder, or pass --overwrite "
                         "to remove those files first")


def clear_dataset_output(args: argparse.Namespace) -> None:
    """With ``--overwrite``, remove the earlier dataset in ``--out`` (just before the new one is written)."""
    from vlalign.data.folder import remove_dataset_entries

    if args.overwrite and args.out.is_dir():
        removed = remove_dataset_entries(args.out)
        if removed:
            print(f"--overwrite: removed the earlier dataset in {args.out} ({', '.join(removed)})", file=sys.stderr)


def run_export(args: argparse.Namespace) -> int:
    from vlalign.data.folder import export_image_set
    from vlalign.data.mini_world import MiniWorld

    if args.n < 1:
        what = "images per part" if args.split.startswith("retrieval") else "images"
        raise ValueError(f"--n must be >= 1 ({what} to export), got {args.n}")
    check_dataset_output(args)
    if args.split.startswith("retrieval"):
        return _export_retrieval(args)
    if args.split in ("vqa", "captions"):
        return _export_generative(args)
    images = MiniWorld().sample(args.split, args.n, args.seed)
    clear_dataset_output(args)
    export_image_set(images, args.out, progress=True)
    print(f"wrote {len(images)} images of split {args.split!r} to {args.out}")
    return 0


def _export_retrieval(args: argparse.Namespace) -> int:
    from vlalign.data.karpathy import export_karpathy
    from vlalign.data.retrieval_world import RETRIEVAL_SPLITS, RetrievalWorld

    part = args.split.partition("-")[2]
    if args.split != "retrieval" and part not in RETRIEVAL_SPLITS:
        raise ValueError(f"unknown split {args.split!r}; expected retrieval or one of "
                         f"{[f'retrieval-{p}' for p in RETRIEVAL_SPLITS]}")
    world = RetrievalWorld()
    parts = {p: world.sample(p, args.n, args.seed) for p in ([part] if part else list(RETRIEVAL_SPLITS))}
    clear_dataset_output(args)
    path = export_karpathy(parts, args.out, progress=True)
    print(f"wrote {sum(len(p) for p in parts.values())} images ({', '.join(parts)}) and {path}")
    return 0


def run_typographic(args: argparse.Namespace) -> int:
    from vlalign.data.folder import (
        export_image_set, load_image_folder,
    )
    from vlalign.data.image_set import ImageSet
    from vlalign.data.typographic import WordClippedWarning, typographic_attack

    check_dataset_output(args)
    source = load_image_folder(args.data)
    attacked, written, clipped = [], [], []
    for i in range(len(source)):
        # One generator per image, keyed by its file name: an image's attack depends on (seed, file) alone, not on
        # the images before it, so a subset or a re-ordered folder gets the same attack for the same file.
        key = zlib.crc32(source.files[i].encode()) if source.files else i
        rng = np.random.default_rng([args.seed, key])
        image = Image.fromarray(source.images[i].permute(1, 2, 0).numpy())
        label = source.classnames[int(source.labels[i])]
        name = source.files[i] if source.files else f"image {i}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WordClippedWarning)
            try:
                out, word = typographic_attack(image, label, source.classnames, rng, n_instances=args.instances)
            except ValueError as exc:
                raise ValueError(f"{args.data / name}: {exc}") from None
        if any(issubclass(w.category, WordClippedWarning) for w in caught):
            clipped.append(f"{name} ({word!r})")
        attacked.append(torch.from_numpy(np.array(out)).permute(2, 0, 1))  # a writable copy of the PIL buffer
        # The words already on the image stay listed beside the new one (it is painted over them, not instead).
        earlier = source.written_words(i)
        new = source.classnames.index(word)
        written.append(earlier + [new] if new not in earlier else earlier)
    if clipped:  # one line for the folder, not one per image
        warnings.warn(WordClippedWarning(
            f"{len(clipped)} of {len(source)} images are too small for their word, which is cut off at the border "
            f"(e.g. {', '.join(clipped[:3])})"))
    width = max(len(w) for w in written)
    written_tensor = (torch.tensor([w[0] for w in written]) if width == 1
                      else torch.tensor([w + [-1] * (width - len(w)) for w in written]))
    result = ImageSet(torch.stack(attacked), source.labels, source.classnames, written_tensor, source.captions,
                      files=source.files)
    clear_dataset_output(args)
    export_image_set(result, args.out, progress=True)
    print(f"wrote {len(result)} typographically attacked images to {args.out}")
    return 0


def _export_generative(args: argparse.Namespace) -> int:
    from vlalign.data.vqa import MiniCaptions, MiniVQA
    from vlalign.data.vqa_formats import export_captions, export_vqa

    clear_dataset_output(args)
    if args.split == "vqa":
        export_vqa(MiniVQA(args.n, args.seed), args.out, progress=True)
        print(f"wrote {args.n} mini-world questions in VQAv2 format (questions.json, annotations.json, images/) to {args.out}")
    else:
        export_captions(MiniCaptions(args.n, args.seed), args.out, progress=True)
        print(f"wrote {args.n} captioned mini-world images in COCO-captions format (captions.json, images/) to {args.out}")
    return 0
