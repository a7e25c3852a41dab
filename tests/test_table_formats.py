"""A table grid written as Markdown, CSV, LaTeX and JSON (rkd.evaluation.table_formats)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rkd.evaluation.table_formats import render

HEAD = ["method", "clean", "worst case Linf 8/255", "masking flags"]
BODY = [["standard training", "97.50", "29.72", "none"], ["DD (T=20) & 100% _x_", "96.67 ± 0.5", "", "FLAGGED: a, b"]]


def test_markdown_csv_and_json_keep_every_cell():
    md = render(HEAD, BODY)
    assert md.splitlines()[0] == "| method | clean | worst case Linf 8/255 | masking flags |"
    assert md.splitlines()[3] == "| DD (T=20) & 100% _x_ | 96.67 ± 0.5 |  | FLAGGED: a, b |"
    assert list(csv.reader(io.StringIO(render(HEAD, BODY, "csv")))) == [HEAD, *BODY]
    assert json.loads(render(HEAD, BODY, "json")) == [dict(zip(HEAD, row)) for row in BODY]


def test_latex_escapes_what_tex_would_read_as_markup():
    tex = render(HEAD, BODY, "latex")
    assert tex.startswith(r"\begin{tabular}{lrrr}") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"DD (T=20) \& 100\% \_x\_ & 96.67 $\pm$ 0.5 &  & FLAGGED: a, b \\" in tex
    with pytest.raises(ValueError, match="choose from md, csv, latex, json"):
        render(HEAD, BODY, "xlsx")
