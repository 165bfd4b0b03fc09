"""Run vlalign's benchmarks side by side and print ratio tables; write ``benchmarks/results/<name>.json``.

    python -m benchmarks                      # every CPU benchmark (about 30 minutes on 2 busy cores)
    python -m benchmarks --only po,pgd        # some of them
    python -m benchmarks --quick              # tiny sizes: the CI smoke test (writes to a temporary folder)
    python -m benchmarks --device cuda        # the GPU path: CLIP ViT-B/32, batch 256, bf16 (see RESULTS.md)

A ``--quick`` run never writes into ``benchmarks/results`` (the measurements RESULTS.md is made from), and a run
whose rows are skipped (no torchattacks, no GPU) keeps a saved file with measured rows and writes
``<name>.skipped.json`` beside it.

Every ratio is measured within one run, variants interleaved round by round; a row gives the median ratio over
the rounds and their spread, and the JSON records the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.bench_gpu import SETUPS
from benchmarks.common import Row, Settings, environment
from vlalign.io import atomic_write_json

HERE = Path(__file__).resolve().parent
#: Where the measured results live (RESULTS.md and ``--show`` read them); ``--quick`` never writes here.
RESULTS = HERE / "results"
#: What ``--show`` prints beside a result that a ``--quick`` run wrote.
QUICK_MARK = "(quick smoke run, not a measurement)"


def _registry() -> dict[str, tuple[Callable[[Settings], list[Row]], str]]:
    from benchmarks import bench_adpo, bench_attacks, bench_data, bench_engine, bench_eval, bench_gpu, bench_po

    return {
        "po": (bench_po.run_po, "full-tower DPO step vs plain CE step and vs a naive DPO step"),
        "head": (bench_po.run_head, "head mode on cached features vs through the encoder"),
        "pgd": (bench_attacks.run_pgd, "vlalign PGD vs torchattacks PGD (same start; images compared)"),
        "apgd": (bench_attacks.run_apgd, "vlalign APGD-CE vs torchattacks APGD-CE"),
        "attack-floor": (bench_attacks.run_floor, "PGD and APGD vs a bare forward+backward of the batch"),
        "zero-shot": (bench_eval.run_zero_shot, "zero-shot evaluation vs a bare forward pass"),
        "retrieval": (bench_eval.run_retrieval, "Recall@k on a 5,000-image gallery: chunked vs full matrix"),
        "loop": (bench_engine.run_loop, "the engine's fit vs a bare training loop"),
        "parallel": (bench_engine.run_parallel, "2 processes x 1 thread vs 1 process x 2 threads"),
        "memory": (bench_engine.run_memory, "peak memory: 20,000-image folder vs 2,000"),
        "data": (bench_data.run, "mini-world generation: worker pool vs one process"),
        "adpo": (bench_adpo.run_adpo, "AdPO step vs FARE step on the same image tower and batch"),
        "gpu": (bench_gpu.run, "GPU: CLIP ViT-B/32 PO/CE step img/s and MFU, PGD-10 img/s (needs --device cuda)"),
    }


CPU_DEFAULT = ("po", "head", "pgd", "apgd", "attack-floor", "zero-shot", "retrieval", "loop", "parallel", "memory",
               "data", "adpo")
CUDA_DEFAULT = ("gpu",)


def _memory_cell(row: Row, name: str) -> str:
    """``peak (+growth)`` of one side in MiB; ``(+-)`` where the growth was not measured."""
    growth = row.growth_mib.get(name)
    return f"{row.peak_mib[name]:.0f} (+{'-' if growth is None else f'{growth:.0f}'})"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_rows(rows: list[Row]) -> str:
    """One markdown table for the rows of a benchmark (skipped rows say why)."""
    from vlalign.reporting.tables import markdown_table

    lines = []
    for row in rows:
        if row.skipped:
            lines.append([row.compared, "skipped: " + row.skipped, "", "", "", "", "", "", "", "", ""])
            continue
        spread = f"{row.spread[0]:.3g}–{row.spread[1]:.3g}" if row.spread else "-"
        met = {True: "yes", False: "NO", None: ""}[row.met]
        peaks = ", ".join(_memory_cell(row, k) for k in row.peak_mib) or "-"
        lines.append([row.compared, f"{row.model}; batch {row.batch}; threads {row.threads}; {row.device}",
                      row.unit, f"{_cell(row.variant_value)} vs {_cell(row.baseline_value)}", _cell(row.ratio), spread,
                      row.rounds, row.target, met, peaks,
                      "; ".join(f"{k}={_cell(v)}" for k, v in row.extra.items())])
    return markdown_table(["compared (variant vs baseline)", "model; batch; threads; device", "unit",
                           "variant vs baseline", "ratio (median)", "spread", "rounds", "target", "met",
                           "peak MiB (+growth): variant, baseline", "notes"], lines)


def _measured_rows(path: Path) -> int:
    """How many rows of the saved result ``path`` were measured (not skipped); 0 for a missing or unreadable file."""
    try:
        rows = json.loads(path.read_text())["rows"]
        return sum(1 for row in rows if not row["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def write_result(out: Path, name: str, result: dict) -> Path:
    """Write ``result`` atomically to ``out/<name>.json``, or to ``out/<name>.skipped.json`` when it skipped rows
    and the saved file has more measured rows (a skipped row never replaces a measurement); returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    measured = sum(1 for row in result["rows"] if not row["skipped"])
    if measured < len(result["rows"]) and _measured_rows(path) > measured:
        path = out / f"{name}.skipped.json"
    atomic_write_json(path, result)
    return path


def run_benchmark(name: str, settings: Settings, out: Path | None, command: str) -> dict:
    """Run one benchmark, print its table, and write its JSON under ``out`` (see :func:`write_result`); returns the
    JSON's content."""
    function, what = _registry()[name]
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    began = time.perf_counter()
    rows = function(settings)
    result = {
        "benchmark": name, "what": what, "command": command, "started": started,
        "seconds": round(time.perf_counter() - began, 2),
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "environment": environment(settings), "rows": [row.to_json() for row in rows],
    }
    print(f"\n## {name}: {what}\n(load average {load_before[0]:.2f} → {result['loadavg_after'][0]:.2f}, "
          f"{result['seconds']:.0f} s)\n")
    print(format_rows(rows), flush=True)
    if out is not None:
        path = write_result(out, name, result)
        if path.name.endswith(".skipped.json"):
            print(f"(rows skipped: kept the measured {out / f'{name}.json'}, wrote {path})", flush=True)
    return result


def brief_table(results: list[dict]) -> str:
    """One compact table of every row of ``results`` (saved JSON contents): what, ratio, spread, target, met."""
    from vlalign.reporting.tables import markdown_table

    lines = []
    for result in results:
        quick = f" {QUICK_MARK}" if result["environment"].get("quick") else ""
        for row in result["rows"]:
            load = f"{result['loadavg_before'][0]:.1f}→{result['loadavg_after'][0]:.1f}"
            if row["skipped"]:
                lines.append([row["benchmark"] + quick, row["compared"], "skipped", "", "", "", load])
                continue
            spread = f"{row['spread'][0]:.2f}–{row['spread'][1]:.2f}" if row["spread"] else "-"
            lines.append([row["benchmark"] + quick, f"{row['compared']} ({row['model']}, batch {row['batch']})",
                          f"{row['ratio']:.3g}× ({row['unit']})", spread, row["target"],
                          {True: "yes", False: "no", None: ""}[row["met"]], load])
    return markdown_table(["row", "variant vs baseline", "median ratio", "spread", "target", "met", "load average"],
                          lines)


def saved_files(folder: Path, names: list[str] | None = None) -> list[Path]:
    """The saved results ``<name>.json`` in ``folder`` (of ``names``, if given), in the runner's order; the
    ``<name>.skipped.json`` of runs that skipped rows are not among them."""
    order = list(_registry())
    files = [p for p in folder.glob("*.json")
             if not p.name.endswith(".skipped.json") and (not names or p.stem in names)]
    return sorted(files, key=lambda p: order.index(p.stem) if p.stem in order else len(order))


def _saved(folder: Path, names: list[str] | None) -> list[dict]:
    return [json.loads(p.read_text()) for p in saved_files(folder, names)]


def show(folder: Path, names: list[str] | None, brief: bool = False) -> int:
    """Print the tables of earlier runs from their JSON files, with the command and load of each."""
    results = _saved(folder, names)
    if brief:
        print(brief_table(results))
        return 0
    for result in results:
        rows = [Row(**{**row, "spread": tuple(row["spread"]) if row["spread"] else None}) for row in result["rows"]]
        env = result["environment"]
        quick = f" {QUICK_MARK}" if env.get("quick") else ""
        print(f"\n### {result['benchmark']}: {result['what']}{quick}\n\n`{result['command']}` — {result['started']}, "
              f"{result['seconds']:.0f} s, load average {result['loadavg_before'][0]:.2f} → "
              f"{result['loadavg_after'][0]:.2f} on {env['cpu_count']} cores, torch {env['torch']}\n")
        print(format_rows(rows))
    return 0


def _check_show(parser: argparse.ArgumentParser, folder: Path, wanted: list[str] | None) -> None:
    """``--show``: the ``--only`` names must be benchmarks and ``folder`` must hold saved results of them."""
    names = list(_registry())
    unknown = [n for n in wanted or () if n not in names]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {names}")
    if not folder.is_dir() or not saved_files(folder):
        parser.error(f"--out {folder}: expected a folder of saved results (<name>.json), found none")
    if not saved_files(folder, wanted):
        parser.error(f"--only: {folder} holds no saved result of {wanted}")


def _output_folder(parser: argparse.ArgumentParser, out: Path | None, quick: bool) -> Path:
    """Where a run writes: ``--out``, else ``benchmarks/results``; a ``--quick`` run gets a new temporary folder
    and may not write into ``benchmarks/results`` (its toy numbers would replace the measurements)."""
    if not quick:
        return out if out is not None else RESULTS
    if out is None:
        return Path(tempfile.mkdtemp(prefix="vlalign-bench-quick-"))
    resolved, results = out.resolve(), RESULTS.resolve()
    if resolved == results or results in resolved.parents:
        parser.error(f"--out {out}: a --quick run is a smoke test, not a measurement, and may not replace the "
                     "measured results in benchmarks/results; choose another folder (default: a temporary one)")
    return out


def main(argv: list[str] | None = None) -> int:
    names = list(_registry())
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:7]))
    parser.add_argument("--only", help=f"comma-separated benchmarks, of: {', '.join(names)} (default: every CPU one; "
                                       "with --device cuda: gpu)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few rounds: a smoke test, not a measurement (written to a temporary "
                             "folder unless --out names another one; never to benchmarks/results)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per process (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per comparison (default 5, "
                                                                   "--quick 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <name>.json (default: benchmarks/results; with --quick: a new temporary "
                             "folder)")
    parser.add_argument("--gpu-setups", default=",".join(s.name for s in SETUPS),
                        help="gpu rows: comma-separated set-ups, each adding SDPA attention, fused AdamW, "
                             "torch.compile "
                             "(default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="gpu rows: the GPU's dense bf16 peak for MFU (default: looked up by the GPU's name)")
    parser.add_argument("--show", action="store_true",
                        help="run nothing: print the tables of the JSON files already in --out (for RESULTS.md)")
    parser.add_argument("--brief", action="store_true", help="with --show: one compact table of every row")
    args = parser.parse_args(argv)
    if args.brief and not args.show:
        parser.error("--brief only applies with --show (it prints the saved results as one table); add --show")
    if args.show:
        folder, wanted = args.out if args.out is not None else RESULTS, args.only.split(",") if args.only else None
        _check_show(parser, folder, wanted)
        return show(folder, wanted, args.brief)
    if args.threads < 1:
        parser.error(f"--threads: expected a number of threads >= 1, got {args.threads}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats: expected a number of rounds >= 1, got {args.repeats}")
    if args.peak_tflops is not None and not (math.isfinite(args.peak_tflops) and args.peak_tflops > 0):
        parser.error(f"--peak-tflops: expected a positive number of TFLOP/s, got {args.peak_tflops}")
    try:
        device_type = torch.device(args.device).type
    except RuntimeError:
        device_type = None
    if device_type not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda (e.g. cuda:0), got {args.device!r}")
    default = CUDA_DEFAULT if device_type == "cuda" else CPU_DEFAULT
    wanted = args.only.split(",") if args.only else list(default)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    setups = tuple(args.gpu_setups.split(","))
    if any(name not in {s.name for s in SETUPS} for name in setups):
        parser.error(f"--gpu-setups {args.gpu_setups!r}: choose from {[s.name for s in SETUPS]}")
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build sees no GPU")
    out = _output_folder(parser, args.out, args.quick)
    torch.set_num_threads(args.threads)
    settings = Settings(quick=args.quick, device=args.device, threads=args.threads,
                        repeats=args.repeats if args.repeats is not None else (2 if args.quick else 5),
                        gpu_setups=setups,
                        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops is not None else None)
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    for name in wanted:
        run_benchmark(name, settings, out, command)
    print(f"\nresults written to {out}" + (f" {QUICK_MARK}" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
