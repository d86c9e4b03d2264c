"""Measure, with pdflatex, the printed width of every character ``adarank.analysis.latex`` may set
(printable ASCII and the symbols of its escape table) at each table font size, regular and bold, in
a two-column 10 pt article; write them to src/adarank/analysis/latex_widths.json.

    python scripts/latex_widths.py      # needs pdflatex (Debian: texlive-latex-recommended)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from adarank.analysis.latex import SIZES, SPECIAL, WIDTHS_FILE, escape


def main() -> int:
    chars = [chr(c) for c in range(32, 127)] + [c for c in SPECIAL if ord(c) >= 127]
    lines = [r"\documentclass[10pt,twocolumn]{article}", r"\newlength\w", r"\begin{document}"]
    for size in SIZES:
        for weight, command in (("regular", ""), ("bold", r"\bfseries")):
            for char in chars:
                # a space alone has no width in a box: measure "x x" minus "xx"
                text = "x x" if char == " " else escape(char)
                lines.append(rf"\settowidth\w{{\{size}{command} {text}}}\typeout{{W|{size}|{weight}|{ord(char)}|\the\w}}")
                if char == " ":
                    lines.append(rf"\settowidth\w{{\{size}{command} xx}}\typeout{{W|{size}|{weight}|-32|\the\w}}")
    lines.append(r"\end{document}")
    with tempfile.TemporaryDirectory() as folder:  # noqa: SIM117
        (Path(folder) / "widths.tex").write_text("\n".join(lines))
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "widths.tex"], cwd=folder, check=True,
                       capture_output=True)
        log = (Path(folder) / "widths.log").read_text()
    widths: dict = {}
    for size, weight, code, value in re.findall(r"^W\|(\w+)\|(\w+)\|(-?\d+)\|([\d.]+)pt", log, re.M):
        widths.setdefault(size, {}).setdefault(weight, {})[int(code)] = float(value)
    out = {}
    for size, weights in widths.items():
        out[size] = {}
        for weight, table in weights.items():
            table[32] = table[32] - table.pop(-32)
            out[size][weight] = {chr(code): round(width, 3) for code, width in sorted(table.items())}
    WIDTHS_FILE.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {WIDTHS_FILE} ({sum(len(t) for w in out.values() for t in w.values())} widths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
