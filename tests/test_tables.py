"""Markdown tables for reading: three significant figures (the CSVs keep full precision), Table 7 as stages x maps."""

from __future__ import annotations

import csv
import math

from motion_relevance.pipeline.tables import randomization_markdown, randomization_rows, to_markdown, write_tables


def test_three_significant_figures_in_markdown_full_precision_in_csv(tmp_path) -> None:
    rows = [{"method": "dtd", "x": 8.611e-09, "x_std": 1.155, "x_n": 4.0, "x_n_undefined": 0.0},
            {"method": "gbp", "x": 0.009623, "x_std": 0.01407, "x_n": 12.0, "x_n_undefined": 3.0},
            {"method": "big", "x": 123456.7, "x_std": math.nan, "x_n": 2, "x_n_undefined": None}]
    text = to_markdown(rows)
    assert "| dtd | 8.61e-09 ± 1.16 | 4 | 0 |" in text
    assert "| gbp | 0.00962 ± 0.0141 | 12 | 3 |" in text
    assert "| big | 1.23e+05 ± nan | 2 | – |" in text
    metrics = {"test/precision/dtd": 0.123456789, "test/precision_std/dtd": 0.0456789, "test/precision_n/dtd": 4.0}
    write_tables(metrics, tmp_path)
    md = (tmp_path / "table1_precision.md").read_text()
    assert "| dtd | 0.123 ± 0.0457 | 4 | – |" in md
    with open(tmp_path / "table1_precision.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["precision"]) == 0.123456789 and float(row["precision_std"]) == 0.0456789


def _randomization_metrics() -> dict[str, object]:
    m: dict[str, object] = {"test/randomization_stages": ["none", "fc8", "fc7"]}
    for k, (a, b, c) in enumerate([(1.0, 1.0, 0.9), (0.8, 0.7, 0.3), (0.1, 0.6, 0.05)]):
        m[f"test/randomization_s{k}/dtd"] = a
        m[f"test/randomization_s{k}/dtd_selective"] = c
        m[f"test/randomization_s{k}/gbp"] = b
        m[f"test/randomization_s{k}_std/dtd"] = 0.01 * (k + 1)
    return m


def test_randomization_table_is_stages_by_maps() -> None:
    rows = randomization_rows(_randomization_metrics(), "test")
    assert len(rows) == 6  # long rows for the CSV: (method, stage)
    text = randomization_markdown(rows, title="t7")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| stage | layer | dtd | dtd_selective | gbp |"
    assert lines[2] == "| 0 | none | 1 ± 0.01 | 0.9 | 1 |"
    assert lines[3] == "| 1 | fc8 | 0.8 ± 0.02 | 0.3 | 0.7 |"
    assert lines[4] == "| 2 | fc7 | 0.1 ± 0.03 | 0.05 | 0.6 |"
    assert len(lines) == 5


def test_write_tables_writes_the_wide_table7_and_the_long_csv(tmp_path) -> None:
    write_tables(_randomization_metrics(), tmp_path)
    assert "| stage | layer | dtd | dtd_selective | gbp |" in (tmp_path / "table7_randomization.md").read_text()
    with open(tmp_path / "table7_randomization.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["stage"]) for r in rows][:2] == [("dtd", "0"), ("dtd", "1")]


def test_every_column_is_defined_once_in_docs_method() -> None:
    """docs/method.md's column reference is the page's hover text, word for word (regenerate with
    ``columns_markdown()`` when a column is added)."""
    from pathlib import Path

    from motion_relevance.pipeline.report_page import columns_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    assert columns_markdown() in text
    assert text.count("| column | definition |") == 1
