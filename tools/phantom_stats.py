#!/usr/bin/env python
"""Measure a phantom cohort against the published figures it is anchored to (docs/PHANTOM.md).

Example::

    python tools/make_phantom.py --out /tmp/ph75 --cases 75 --matrix 160 --slices 48
    python tools/phantom_stats.py --phantom /tmp/ph75 --out /tmp/ph75/PHANTOM_STATS.md --check

Reads ``PHANTOM/phantom.json`` (written by tools/make_phantom.py) and prints one markdown row per
anchor: the feature, the published figure with its source, what the cohort measures, how many
values, and whether it lies inside the published range. ``--check`` exits 1 when a measured
figure lies outside its range. Bad input: one ``error: ...`` line, exit code 2.
"""
import argparse
import os
import sys

from breast_d2.cli import OneLineErrorParser, fail
from breast_d2.data.converted import read_json
from breast_d2.data.errors import CohortError
from breast_d2.data.phantom.measure import counts, figures, measure_cohort, table_rows
from breast_d2.evaluation.tables import markdown_table
from breast_d2.fileio import write_atomic


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phantom", required=True, help="cohort folder with phantom.json")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a measured figure lies outside its published range")
    return parser


def render(doc) -> str:
    """The markdown of a ``phantom.json`` document: cohort line and the anchor table."""
    records = doc.get("cases")
    if not isinstance(records, list):
        raise CohortError("phantom.json has no 'cases' list")
    c = counts(records)
    head = (f"Cohort: {c['cases']} cases, {c['masses']} masses, {c['cases_without_mass']} cases "
            f"without mass; matrix {doc.get('matrix')}, {doc.get('slices')} slices, seed "
            f"{doc.get('seed')}, generator {doc.get('version', '?')}.")
    rows = table_rows(measure_cohort(records))
    table = markdown_table(["feature", "published figure (source)", "phantom measures", "n",
                            "inside"], rows)
    extra = figures(records)
    other = "".join(f"- {name}: {value}\n" for name, value in extra.items())
    if other:
        other = "\nMeasured without a published range to check:\n\n" + other
    return head + "\n\n" + table + "\n" + other, rows


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    path = os.path.join(args.phantom, "phantom.json")
    if not os.path.isfile(path):
        fail(f"{path}: no phantom.json (write the cohort with tools/make_phantom.py)")
    try:
        text, rows = render(read_json(path))
    except (CohortError, KeyError, TypeError) as e:
        fail(f"{path}: {e}")
    sys.stdout.write(text)
    if args.out:
        write_atomic(args.out, lambda f: f.write(text))
    outside = [r[0] for r in rows if r[-1] != "yes" and r[-1] != "n/a"]
    if args.check and outside:
        sys.stderr.write(f"error: {len(outside)} figure(s) outside the published range: "
                         f"{'; '.join(outside)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
