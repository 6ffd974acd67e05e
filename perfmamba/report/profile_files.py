"""The output directory of `perfmamba profile`: results.json, components.csv, configs.csv, report.md, plots.

Every file is written under a temporary name and renamed into place, so an interrupted run never leaves a
half-written file.  CSVs hold plain numbers only (NaN as "nan", which float() reads back).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

from perfmamba.fileio import write_text_atomic
from perfmamba.profiling.records import RESULTS_FILE, ComponentRecord, ConfigRecord, ProfileRun

COMPONENTS_CSV = "components.csv"
CONFIGS_CSV = "configs.csv"
REPORT_MD = "report.md"


def _plain(value):
    if isinstance(value, bool) or value is None:
        return "" if value is None else int(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def records_csv(records: list, cls) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for rec in records:
        writer.writerow([_plain(getattr(rec, n)) for n in names])
    return buf.getvalue()


def write_data_files(run: ProfileRun, out_dir: str) -> None:
    """results.json and the CSVs: cheap, written after every configuration."""
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, RESULTS_FILE), json.dumps(run.to_dict(), indent=1) + "\n")
    write_text_atomic(os.path.join(out_dir, COMPONENTS_CSV), records_csv(run.components, ComponentRecord))
    write_text_atomic(os.path.join(out_dir, CONFIGS_CSV), records_csv(run.configs, ConfigRecord))


def write_outputs(run: ProfileRun, out_dir: str, plots: bool = True) -> list:
    """Everything: data files, PNG plots and report.md.  Returns the paths written."""
    from perfmamba.report.profile_markdown import render_report

    write_data_files(run, out_dir)
    written = [os.path.join(out_dir, n) for n in (RESULTS_FILE, COMPONENTS_CSV, CONFIGS_CSV)]
    images = []
    if plots and run.configs:
        from perfmamba.report.profile_plots import write_plots
        images = write_plots(run, out_dir)
        written += [os.path.join(out_dir, p) for p in images]
    write_text_atomic(os.path.join(out_dir, REPORT_MD), render_report(run, images))
    written.append(os.path.join(out_dir, REPORT_MD))
    return written
