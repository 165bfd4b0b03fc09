"""``vlalign transfer``: put a vision encoder trained by vlalign into another generative VLM (decoder untouched)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlalign.commands.common import DTYPES, add_command, add_dtype_argument, add_out_argument, check_output


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "transfer", help="replace a VLM's vision encoder by one trained with vlalign",
                         example="vlalign transfer --encoder runs/adpo --into mini-vlm-large --out runs/transferred")
    parser.add_argument("--encoder", required=True,
                        help="the trained encoder: a MiniCLIP, MiniVLM, CLIP or LLaVA folder (or 'mini')")
    parser.add_argument("--into", required=True,
                        help="the VLM to receive it: mini-vlm, mini-vlm-large, a MiniVLM or LLaVA folder, a LLaVA hub id")
    add_dtype_argument(parser)
    add_out_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlalign.io import atomic_write_json
    from vlalign.models.transfer import transfer_vision_encoder
    from vlalign.models.vlm_loading import load_vlm

    # Model folders are only read: a sub-folder of one may hold the output, the folder itself may not.
    check_output(args.out, [("--encoder", args.encoder), ("--into", args.into)], nested_ok=("--encoder", "--into"),
                 kind="transfer")
    target = load_vlm(args.into, dtype=DTYPES[args.dtype])
    transfer_vision_encoder(args.encoder, target)
    target.save(args.out)
    replaced = sum(1 for _ in target.vision_encoder.parameters())
    atomic_write_json(Path(args.out) / "transfer.json", {"encoder": str(args.encoder), "into": str(args.into),
                                                         "vision_tensors_replaced": replaced})
    print(f"put the vision encoder of {args.encoder} ({replaced} tensors) into {args.into}; projector and decoder "
          f"unchanged; written to {args.out}")
    return 0
