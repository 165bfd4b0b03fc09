"""Standalone HTML reports: a run's Markdown report rendered with its figures embedded, readable offline."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1f24; line-height: 1.5; }
h1, h2, h3 { line-height: 1.25; } h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; margin: .5em 0; }
code, pre { background: #f6f8fa; border-radius: 4px; font-family: 'DejaVu Sans Mono', monospace; font-size: .9em; }
code { padding: .1em .3em; } pre { padding: .8em; overflow-x: auto; }
"""

_IMAGE = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}


def _embed(match: re.Match, folder: Path, missing: list[str]) -> str:
    source = html.unescape(match.group(2))
    path = folder / source
    mime = _MIME.get(path.suffix.lower())
    if "://" in source or source.startswith("data:") or mime is None:
        return match.group(0)
    if not path.is_file():
        missing.append(source)
        return match.group(0)
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"{match.group(1)}data:{mime};base64,{encoded}{match.group(3)}"


def render_markdown(text: str) -> str:
    """The HTML of the Markdown ``text`` (tables, fenced code) with raw HTML turned off: ``<``, ``>`` and ``&`` in
    the text, such as a model path or a class name written into a report, are shown as text, never run."""
    converter = markdown.Markdown(extensions=["tables", "fenced_code"])
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    return converter.convert(text)


def markdown_to_html_checked(text: str, folder: str | Path, title: str) -> tuple[str, list[str]]:
    """:func:`markdown_to_html` and the local images it could not embed because their file is missing."""
    missing: list[str] = []
    body = _IMAGE.sub(lambda m: _embed(m, Path(folder), missing), render_markdown(text))
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
    return page, missing


def markdown_to_html(text: str, folder: str | Path, title: str) -> str:
    """A complete HTML page for the Markdown ``text`` (tables, code blocks; raw HTML shown as text); every local
    image it shows, relative to ``folder``, is embedded as a data URI, so the page needs no other file."""
    return markdown_to_html_checked(text, folder, title)[0]
