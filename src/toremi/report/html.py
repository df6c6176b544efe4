"""The report page: one self-contained HTML file, rendered from ``templates/report.html.j2``.

Run names, method labels, topic names and configs come from files anyone can write, so the page
is rendered by Jinja2 with autoescaping on: the template never marks a value safe, and this
module hands it plain strings and structures (no HTML), so nothing reaches the page unescaped.
"""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

import jinja2
import yaml

from toremi.runs import first_per_label
from toremi.report.summary import DIAGNOSIS_HEAD, EPOCHS_TITLE, diagnosis_rows, epochs_table, tables

TEMPLATE = "report.html.j2"


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("toremi.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def bold_segments(line: str) -> list[tuple[str, bool]]:
    """``a **b** c`` -> [(a, False), (b, True), (c, False)]; an unpaired ``**`` stays text."""
    parts = line.split("**")
    if len(parts) % 2 == 0:  # odd number of markers: the last one is literal
        parts[-2:] = [parts[-2] + "**" + parts[-1]]
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


def md_blocks(md: str) -> list[dict]:
    """The Markdown that ``stats`` writes (### headings, paragraphs with **bold**, pipe tables)
    as blocks for the template: ``{"h2": text}``, ``{"p": segments}``, ``{"head", "rows"}``."""
    blocks, rows = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            blocks.append({"head": rows[0], "rows": rows[1:]})
            rows = []
        if line.startswith("### "):
            blocks.append({"h2": line[4:]})
        elif line.strip():
            blocks.append({"p": bold_segments(line)})
    return blocks


def render(runs: list[dict], summary: dict, figs: list[tuple[str, str]], out: Path,
           title: str, noisy: str | None, lead_md: str = "") -> str:
    """The page: headline and paired tables (``lead_md``, with the forest plot between them),
    results tables, per-topic diagnoses, the other figures (base64), the runs and their configs."""
    images = [{"name": name, "caption": caption,
               "data": base64.b64encode((out / name).read_bytes()).decode()} for name, caption in figs]
    head_md, _, tables_md = lead_md.partition("### ")
    diagnoses = [(r["name"], diagnosis_rows(r)) for r in first_per_label(runs)]
    return environment().get_template(TEMPLATE).render(
        title=title, noisy=noisy, n_runs=len(runs), n_methods=len(summary["methods"]),
        lead=md_blocks(head_md), paired=md_blocks("### " + tables_md if tables_md else ""),
        forest=next((i for i in images if i["name"] == "forest.png"), None),
        figures=[i for i in images if i["name"] != "forest.png"],
        tables=[(t, head, rows) for t, (head, rows) in tables(summary).items()]
        + ([(EPOCHS_TITLE, *epochs_table(runs))] if epochs_table(runs) else []),
        diagnosis_head=DIAGNOSIS_HEAD, diagnoses=[(name, rows) for name, rows in diagnoses if rows],
        runs=[[r["name"], r["label"], str(r["seed"]), str(r["info"].get("status", "?")),
               str(r["info"].get("steps_done", "")), str(r["info"].get("model", {}).get("size", "")),
               str((r["info"].get("tokenizer") or {}).get("name", "")), r["dir"]] for r in runs],
        configs=[(r["name"], yaml.safe_dump({"method_options": r["info"].get("method_options"),
                                             "config": r["config"]}, sort_keys=False)) for r in runs])
