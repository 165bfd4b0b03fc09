"""Arguments and checks shared by several sub-commands.

Every command checks its output folder and device *before* any compute (:func:`check_output`,
:func:`check_device`): an unwritable ``--out`` found after an hour of attacks loses the hour, and an ``--out``
that is also an input folder would overwrite what the user gave it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and keeps the example's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        pointless = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "%(default)" in text or pointless or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_command(sub: argparse._SubParsersAction, name: str, help: str, example: str | Sequence[str],
                description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command parser whose ``--help`` shows the defaults and ``example`` (one command line, or several)."""
    examples = [example] if isinstance(example, str) else list(example)
    label = "example" if len(examples) == 1 else "examples"
    epilog = f"{label}:\n" + "\n".join(f"  {line}" for line in examples)
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                          epilog=epilog, formatter_class=HelpFormatter)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help="'mini' (embedded MiniCLIP), 'mini-people', 'mini-retrieval', a model folder, or a cached hub id such as "
                             "openai/clip-vit-base-patch32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def add_out_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", type=Path, required=required, help="output folder (created if missing)")


#: ``--dtype`` choices: the weight type of a LLaVA's projector and decoder (its vision tower stays float32).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="a LLaVA's projector and decoder weights (its vision tower stays float32); float16 "
                             "halves the memory of a checkpoint stored in float16, as llava-hf's are")


def parse_fraction(text: str) -> float:
    """'4/255' -> 0.01568..., '0.5' -> 0.5."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 4/255, got {text!r}") from None


# ------------------------------------------------------------------------------------------ early checks

def check_device(device: str | torch.device | None, option: str = "--device") -> None:
    """Raise a one-line ValueError when ``device`` is not a usable torch device on this machine."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {device!r}: not a torch device; expected cpu, cuda, cuda:N or mps") from None
    fallback = "use --device cpu" if option.startswith("--") else "set it to cpu"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                reason = "this PyTorch build has no CUDA support (a CPU-only wheel)"
            else:
                reason = "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            raise ValueError(f"{option} {device}: {reason}; {fallback}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) visible "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {device}: Apple's MPS backend is not available here; {fallback}")


def _existing_folder(value: str | Path | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path.resolve() if path.is_dir() else None


def _existing_file(value: str | Path | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path.resolve() if path.is_file() else None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]] = (),
                 nested_ok: Iterable[str] = (), option: str = "--out") -> Path:
    """Check, before any work, that ``out`` can become the output folder; returns it as a Path.

    Fails with a one-line ValueError when ``out`` is a file, lies under a file, cannot be written, or would write
    over an input: it may not be an input folder, contain one (its files could be replaced), or lie inside one
    (a data folder stays as the user made it); nor may it contain an input file. ``inputs`` are ``(option, value)``
    pairs; values that are neither existing folders nor files (``mini``, a hub id, None) are skipped. Options in
    ``nested_ok`` name inputs that may hold the output in a sub-folder (``vlalign control`` writes into
    ``RUN/control`` by default).
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file, expected a folder")
    resolved = out.resolve()
    nested_ok = set(nested_ok)
    for name, value in inputs:
        file = _existing_file(value)
        if file is not None and _is_within(file, resolved):
            raise ValueError(f"{option} {out} contains the {name} file {value}; it could be overwritten: choose an "
                             "output folder outside it")
        folder = _existing_folder(value)
        if folder is None:
            continue
        if resolved == folder:
            raise ValueError(f"{option} {out} is also the {name} folder; writing there would overwrite the input: "
                             "choose another output folder")
        if _is_within(folder, resolved):
            raise ValueError(f"{option} {out} contains the {name} folder {value}; its files could be overwritten: "
                             "choose an output folder outside it")
        if _is_within(resolved, folder) and name not in nested_ok:
            raise ValueError(f"{option} {out} lies inside the {name} folder {value}; an input folder is never "
                             "written to: choose an output folder outside it")
    ancestor = resolved
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {out}: {ancestor} is a file, so no folder can be created under it")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {out}: cannot write in {ancestor} ({exc.strerror or exc})") from None
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: cannot write in {ancestor} (permission denied)")
    return out
