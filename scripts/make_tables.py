"""Tables I-IV, the cost table and Figures 2-5 from a results tree (`make tables`).

    python scripts/make_tables.py --results results/raw --out results/tables
"""

from __future__ import annotations

import argparse
import logging
import sys

from adarank.analysis import NoResultsError, write_report
from adarank.analysis.report import UnknownSetupError
from adarank.analysis.tables import PAPER_LAYOUTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/raw", help="results tree (searched for */metrics.json)")
    parser.add_argument("--out", default="results/tables", help="folder for the tables and figures/")
    parser.add_argument("--conf", default=None, help="Hydra conf/ folder the runs are compared to (default: the repo's)")
    parser.add_argument("--setup", default=None,
                        help="setup to show (a label from the summary, or 'all'; default: the paper setup, "
                             "else the setup with most runs)")
    parser.add_argument("--paper", default="delta", choices=PAPER_LAYOUTS,
                        help="LaTeX tables of the paper setup: (ours - paper) below each cell (delta), a paper "
                             "column beside each of ours (column), or ours only (none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = write_report(args.results, args.out, conf_dir=args.conf, setup=args.setup, paper=args.paper)
    except (NoResultsError, UnknownSetupError, FileExistsError) as err:
        print(f"make tables: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the tables are written into a temporary folder swapped in at the end
        print(f"make tables: interrupted; {args.out} is as it was before", file=sys.stderr)
        return 130
    print(report.summary())
    print(f"wrote {len(report.files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
