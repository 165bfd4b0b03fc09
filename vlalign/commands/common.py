"""Arguments and checks shared by several sub-commands.

Every command checks its output folder and device *before* any compute (:func:`check_output`,
:func:`check_device`): an unwritable ``--out`` found after an hour of attacks loses the hour, and an ``--out``
that is also an input folder would overwrite what the user gave it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
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


#: The largest seed: every generator vlalign seeds (torch's, NumPy's) takes any integer in [0, 2**63 - 1].
MAX_SEED = 2**63 - 1


def seed_problem(value: object) -> str | None:
    """Why ``value`` is not a usable seed (an integer in [0, 2**63 - 1]), or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer seed, got {value!r}"
    if not 0 <= value <= MAX_SEED:
        return f"must be an integer in [0, 2**63 - 1], got {value}"
    return None


def parse_seed(text: str) -> int:
    """An argparse ``type`` for ``--seed``-like options: an integer in [0, 2**63 - 1], checked at parse time."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    problem = seed_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def check_template(template: object, where: str) -> None:
    """Raise a one-line ValueError naming ``where`` unless ``template`` is a prompt template with exactly one
    ``{}`` (where the class name goes) and no other replacement field."""
    from vlalign.models.embeddings import template_problem

    problem = template_problem(template)
    if problem is not None:
        raise ValueError(f"{where} {problem}")


def check_config_fields(config: object, source: str | Path) -> None:
    """Check a loaded run config before any work: every seed field (``seed``, ``*_seed``) is an integer in
    [0, 2**63 - 1] and every prompt-template field (``template``, ``templates``) formats with one class name.

    Errors name the file and the field (``c.yaml: eval.seed must be ...``); the config classes check their own
    ranges, but not these, which otherwise fail late (after training) with a message naming nothing.
    """
    def walk(node: object, path: str) -> None:
        if not dataclasses.is_dataclass(node) or isinstance(node, type):
            return
        for item in dataclasses.fields(node):
            value = getattr(node, item.name, None)
            where = f"{path}{item.name}"
            if item.name == "seed" or item.name.endswith("_seed"):
                problem = seed_problem(value) if value is not None else None
                if problem is not None:
                    raise ValueError(f"{source}: {where} {problem}")
            elif item.name == "template" and value is not None:
                check_template(value, f"{source}: {where}")
            elif item.name == "templates" and isinstance(value, (list, tuple)):
                for i, template in enumerate(value):
                    check_template(template, f"{source}: {where}[{i}]")
            else:
                walk(value, f"{where}.")

    walk(config, "")


# ------------------------------------------------------------------------------------------ early checks

def check_device(device: str | torch.device | None, option: str = "--device") -> None:
    """Raise a one-line ValueError when ``device`` is not a usable torch device on this machine."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {device!r}: not a torch device; expected cpu, cuda, cuda:N or mps") from None
    # torch also parses devices no vlalign model can run on ("meta" holds no data, "xla" needs torch_xla)
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option} {device!r}: not a device vlalign can compute on; expected cpu, cuda, cuda:N "
                         "or mps")
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


#: Run kinds that resume in their folder: a folder with a ``state/`` sub-folder (a training checkpoint) but no
#: ``report.json`` yet is an unfinished run of one of them.
TRAINING_KINDS = ("train", "pretrain", "pretrain-vlm")
#: Run kinds whose command computes and writes all its results again when re-run into its own folder.
REWRITTEN_KINDS = ("eval", "robust-eval", "robust-eval-vlm", "probe", "control")


def check_run_kind(out: Path, kind: str, option: str = "--out") -> str | None:
    """The kind of run the existing folder ``out`` holds (from its ``report.json``; None when it holds none).

    Raise a one-line ValueError when it holds a run of another kind than ``kind``, whose results the command
    would replace (a training run's ``metrics.json`` by an evaluation's, say), or an unfinished training run
    (``state/``) when the command is not a training one. A ``kind`` that no run records (``"data"``,
    ``"transfer"``) refuses every run folder.
    """
    info_path = out / "report.json"
    training = (out / "state").is_dir()
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        recorded = info.get("kind") if isinstance(info, dict) else None
        if not isinstance(recorded, str):
            if training and kind in TRAINING_KINDS:
                return None  # the training pipeline checks that the run is this config's
            raise ValueError(f"{option} {out}: its report.json is unreadable or names no \"kind\", so the run it "
                             "holds is unknown and could be overwritten: choose another folder")
        if recorded != kind:
            raise ValueError(f"{option} {out} holds a {recorded!r} run (see its report.json); writing a {kind!r} "
                             "run there would replace its results: choose another folder")
        return recorded
    if training and kind not in TRAINING_KINDS:
        raise ValueError(f"{option} {out} holds an unfinished training run (its state/ folder); writing a {kind!r} "
                         "run there would mix their files: choose another folder")
    return None


def check_output(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]] = (),
                 nested_ok: Iterable[str] = (), option: str = "--out", kind: str | None = None) -> Path:
    """Check, before any work, that ``out`` can become the output folder; returns it as a Path.

    Fails with a one-line ValueError when ``out`` is a file, lies under a file, cannot be written, or would write
    over an input: it may not be an input folder, contain one (its files could be replaced), or lie inside one
    (a data folder stays as the user made it); nor may it contain an input file. ``inputs`` are ``(option, value)``
    pairs; values that are neither existing folders nor files (``mini``, a hub id, None) are skipped. Options in
    ``nested_ok`` name inputs that may hold the output in a sub-folder (``vlalign control`` writes into
    ``RUN/control`` by default).

    With ``kind`` (the kind of run the command records in ``report.json``), an existing ``out`` must hold no run
    of another kind (:func:`check_run_kind`); re-running a command of :data:`REWRITTEN_KINDS` into its own folder
    says on stderr that the earlier results are replaced.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file, expected a folder")
    recorded = check_run_kind(out, kind, option) if kind is not None and out.is_dir() else None
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
    if recorded in REWRITTEN_KINDS:
        print(f"note: {option} {out} already holds a {recorded!r} run; its results are replaced by this run's",
              file=sys.stderr)
    return out
