"""Reporting: tables, figures and Markdown reports."""

from vlalign.reporting.figures import line_plot, prediction_grid
from vlalign.reporting.tables import markdown_table, percent

__all__ = ["line_plot", "prediction_grid", "markdown_table", "percent"]
