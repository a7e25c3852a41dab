"""A table (a header and rows of text cells) written as Markdown, CSV, LaTeX or JSON: the
formats of ``rkd report --format``. Every table rkd prints is built as such a grid first
(:func:`rkd.evaluation.results.comparison_grid`, :func:`rkd.evaluation.seed_table.seed_grid`)."""

from __future__ import annotations

import csv
import io
import json

FORMATS = ("md", "csv", "latex", "json")
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"


def _latex_cell(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex(head: list[str], body: list[list[str]]) -> str:
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(_latex_cell(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_cell(c) for c in row) + r" \\" for row in body]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def as_csv(head: list[str], body: list[list[str]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(head)
    w.writerows(body)
    return out.getvalue()


def as_json(head: list[str], body: list[list[str]]) -> str:
    return json.dumps([dict(zip(head, row)) for row in body], indent=1, ensure_ascii=False) + "\n"


def render(head: list[str], body: list[list[str]], fmt: str = "md") -> str:
    """The table in ``fmt`` (one of :data:`FORMATS`)."""
    writers = {"md": markdown, "csv": as_csv, "latex": latex, "json": as_json}
    if fmt not in writers:
        raise ValueError(f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    return writers[fmt](head, body)
