"""From a results tree to the paper's artefacts: Tables I-IV, the cost table, Figures 2-5.

    from adarank.analysis import build_report, write_report
    report = write_report("results/raw", "results/tables")   # what `make tables` runs
"""

from adarank.analysis.report import Report, build_report, write_report
from adarank.analysis.runs import NoResultsError, load_runs

__all__ = ["NoResultsError", "Report", "build_report", "load_runs", "write_report"]
