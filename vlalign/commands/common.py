"""Arguments and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help="'mini' (embedded MiniCLIP), a model folder, or a hub id such as openai/clip-vit-base-patch32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def add_out_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", type=Path, required=required, help="output folder (created if missing)")


def parse_fraction(text: str) -> float:
    """'4/255' -> 0.01568..., '0.5' -> 0.5."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 4/255, got {text!r}") from None
