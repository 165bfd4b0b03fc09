"""Helpers shared by the tests: command-line errors, folder digests, interrupted runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vlalign.cli import main


def run_user_error(capsys, argv: list) -> str:
    """Run a command that must fail on bad input: exit code 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vlalign {argv[0]}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path: to check that a command wrote nothing there."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupt_at(monkeypatch, method_class, step: int):
    """Make ``method_class.forward`` raise KeyboardInterrupt (as Ctrl-C would) when it reaches ``step``; returns a
    function that puts the real ``forward`` back."""
    real = method_class.forward

    def forward(self, batch):
        if batch["step"] == step:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(method_class, "forward", forward)
    return lambda: monkeypatch.setattr(method_class, "forward", real)
