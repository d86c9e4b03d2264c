"""LaTeX tables that print as they come: booktabs rules, never scaled, the body at 8 or 7 pt.

A table is given as plain text (any Unicode; ``escape`` makes it safe under LaTeX's default OT1
encoding) and laid out for a two-column 10 pt article: its printed width is computed from the
Computer Modern widths of every character at ``\\footnotesize`` (8 pt) and ``\\scriptsize`` (7 pt)
(``latex_widths.json``, measured with pdflatex by ``scripts/latex_widths.py``), and the first layout
that fits is taken, in this order: one column (``table``) at 8 pt, then 7 pt; the whole page
width (``table*``) at 8 pt, then 7 pt; last, ``table*`` at 7 pt with the data columns split into
panels stacked one below the other. Nothing is ever set below 7 pt (``\\resizebox`` is not used),
so a reader of the printed paper can read every number. A float never holds more than
``MAX_ROWS`` text lines, counted over all its stacked panels (longer tables continue in further
floats).

Needs ``\\usepackage{booktabs}`` only.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

#: \textwidth and \columnwidth (pt) of ``\documentclass[10pt,twocolumn]{article}`` on letter paper;
#: most two-column venues are wider (IEEE 516 / 252 pt), ACL slightly narrower (455 / 219 pt)
TEXT_WIDTH = 469.0
COLUMN_WIDTH = 229.5
#: font size commands tried, largest first; 7 pt is the smallest a table body may use
SIZES = ("footnotesize", "scriptsize")
POINTS = {"footnotesize": 8, "scriptsize": 7}
TABCOLSEP = {"footnotesize": 4.0, "scriptsize": 3.0}  # pt between two columns: twice this
SLACK = 0.97  # keep 3 % of the width free for what the estimate does not see (kerning, rules)
MAX_ROWS = 48  # text lines per float: a float taller than the page would run off it
WIDTHS_FILE = Path(__file__).with_name("latex_widths.json")

# characters that need a command under OT1 (the default font encoding): each prints as the
# character shown in the text, never as another glyph ("<" would print "¡" in OT1)
SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"$<$", ">": r"$>$", "|": r"$|$",
    "±": r"$\pm$", "†": r"$\dagger$", "–": "--", "—": "---", "−": r"$-$", "Δ": r"$\Delta$",
    "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "…": r"\dots{}", "·": r"$\cdot$", "√": r"$\surd$",
    "‘": "`", "’": "'", "“": "``", "”": "''",
    # Greek letters of method labels and options (LoRA+'s λ, EVA's ρ, SoRA's η and ξ, ...)
    **{letter: f"$\\{name}$" for letter, name in zip("αβγδεηθκλμνξπρστφχψω",
                                                    ("alpha", "beta", "gamma", "delta", "epsilon", "eta", "theta",
                                                     "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma",
                                                     "tau", "phi", "chi", "psi", "omega"))},
}


def escape(text: str) -> str:
    """Plain text -> LaTeX that prints the same characters under the default (OT1) encoding. Straight
    double quotes become ``opening'' and closing quotes in turn; other non-ASCII characters lose
    their accents (é -> e); what is left unknown prints as "?"."""
    out = []
    quotes = 0
    for char in str(text):
        if char == '"':
            out.append("``" if quotes % 2 == 0 else "''")
            quotes += 1
        elif char in SPECIAL:
            out.append(SPECIAL[char])
        elif 32 <= ord(char) < 127:
            out.append(char)
        else:
            plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            out.append(escape(plain) if plain else "?")
    return "".join(out)


@lru_cache(maxsize=1)
def _widths() -> dict:
    return json.loads(WIDTHS_FILE.read_text())


def text_width(text: str, size: str, bold: bool = False) -> float:
    """Printed width (pt) of one line of plain ``text`` at ``size``; characters not measured count
    as the widest measured one, so the estimate errs towards too wide."""
    table = _widths()[size]["bold" if bold else "regular"]
    widest = max(table.values())
    return sum(table.get(char, widest) for char in str(text))


def cell_width(text: str, size: str, bold: bool = False) -> float:
    """Width of a cell whose lines are separated by "\\n"; bold applies to the first line."""
    lines = str(text).split("\n")
    return max(text_width(line, size, bold and i == 0) for i, line in enumerate(lines))


@dataclass
class Table:
    """One table as plain text. ``header``: one entry per column ("\\n" breaks a line; a
    ``(group, name)`` pair puts ``group`` over a run of neighbouring columns); ``rows``: cells,
    "\\n" for a second line; ``bold[i][j]``: the first line of a cell in bold; ``keep``: leading
    columns (the row labels) repeated in every panel; ``groups``: row counts after which a
    ``\\midrule`` goes (e.g. one block per task), also where a long table may continue."""

    header: list
    rows: list[list[str]]
    caption: str
    label: str
    note: str = ""
    align: str = ""  # one letter per column; default: "l" for the kept columns, "c" for the rest
    bold: list[list[bool]] | None = None
    keep: int = 1
    groups: list[int] = field(default_factory=list)

    def __post_init__(self):
        columns = len(self.header)
        self.align = self.align or "l" * self.keep + "c" * (columns - self.keep)
        self.bold = self.bold or [[False] * columns for _ in self.rows]
        if any(len(row) != columns for row in self.rows) or len(self.align) != columns:
            raise ValueError(f"{self.label}: every row and the alignment need {columns} columns")


@dataclass
class Layout:
    environment: str  # table | table*
    size: str  # footnotesize | scriptsize
    panels: list[list[int]]  # data-column indices of each panel
    width: float  # the widest panel's estimated width, pt


def column_widths(table: Table, size: str) -> list[float]:
    widths = []
    for j, head in enumerate(table.header):
        name = head[1] if isinstance(head, tuple) else head
        cells = [cell_width(name, size)] + [cell_width(row[j], size, table.bold[i][j]) for i, row in enumerate(table.rows)]
        widths.append(max(cells))
    return widths


def panel_width(table: Table, size: str, columns: list[int], widths: list[float] | None = None) -> float:
    widths = widths or column_widths(table, size)
    shown = list(range(table.keep)) + columns
    body = sum(widths[j] for j in shown) + 2 * TABCOLSEP[size] * (len(shown) - 1)
    # a group heading wider than its columns widens them
    for group, members in _header_groups(table, shown):
        body += max(0.0, text_width(group, size) - (sum(widths[j] for j in members) + 2 * TABCOLSEP[size] * (len(members) - 1)))
    return body


def choose_layout(table: Table) -> Layout:
    data = list(range(table.keep, len(table.header)))
    for environment, limit in (("table", COLUMN_WIDTH), ("table*", TEXT_WIDTH)):
        for size in SIZES:
            width = panel_width(table, size, data)
            if width <= SLACK * limit:
                return Layout(environment, size, [data], width)
    size = SIZES[-1]
    widths = column_widths(table, size)
    for count in range(2, len(data) + 1):
        panels = _split(table, data, count)
        width = max(panel_width(table, size, panel, widths) for panel in panels)
        if width <= SLACK * TEXT_WIDTH:
            return Layout("table*", size, panels, width)
    return Layout("table*", size, [[j] for j in data], max(panel_width(table, size, [j], widths) for j in data))


def _split(table: Table, data: list[int], count: int) -> list[list[int]]:
    """``data`` in ``count`` runs of nearly equal length, never cutting a header group."""
    size = -(-len(data) // count)
    panels, current = [], []
    for j in data:
        group = table.header[j][0] if isinstance(table.header[j], tuple) else None
        previous = table.header[current[-1]][0] if current and isinstance(table.header[current[-1]], tuple) else None
        if len(current) >= size and (group is None or group != previous):
            panels.append(current)
            current = []
        current.append(j)
    return panels + [current] if current else panels


def _header_groups(table: Table, shown: list[int]) -> list[tuple[str, list[int]]]:
    groups: list[tuple[str, list[int]]] = []
    for j in shown:
        head = table.header[j]
        if isinstance(head, tuple):
            if groups and groups[-1][0] == head[0] and groups[-1][1][-1] == shown[shown.index(j) - 1]:
                groups[-1][1].append(j)
            else:
                groups.append((head[0], [j]))
    return groups


def render(table: Table) -> str:
    """The table as one or more floats (LaTeX source)."""
    layout = choose_layout(table)
    chunks = _row_chunks(table, MAX_ROWS // len(layout.panels))  # every panel repeats the rows
    floats = []
    for number, rows in enumerate(chunks):
        first, last = number == 0, number == len(chunks) - 1
        caption = table.caption if first else f"{table.caption} (continued)"
        label = table.label if first else f"{table.label}-part{number + 1}"
        body = [_tabular(table, layout, panel, rows) for panel in layout.panels]
        lines = [
            f"\\begin{{{layout.environment}}}[t]",
            "\\centering",
            f"\\caption{{{escape(caption)}}}",
            f"\\label{{{label}}}",
            f"\\{layout.size}",
            f"\\setlength{{\\tabcolsep}}{{{TABCOLSEP[layout.size]:g}pt}}",
            "\n\\par\\medskip\n".join(body),
        ]
        if table.note and last:
            lines.append(f"\\par\\smallskip\n\\parbox{{\\linewidth}}{{\\raggedright {escape(table.note)}}}")
        lines.append(f"\\end{{{layout.environment}}}")
        floats.append("\n".join(lines))
    return "\n\n".join(floats) + "\n"


def _row_chunks(table: Table, max_lines: int = MAX_ROWS) -> list[list[int]]:
    """Row indices per float: whole groups, at most ``max_lines`` text lines each (one group longer
    than that is cut)."""
    bounds = [0]
    for count in table.groups or [len(table.rows)]:
        bounds.append(bounds[-1] + count)
    if bounds[-1] != len(table.rows):
        bounds.append(len(table.rows))
    lines = [max(cell.count("\n") + 1 for cell in row) for row in table.rows]
    chunks: list[list[int]] = [[]]
    for start, end in zip(bounds, bounds[1:]):
        group = list(range(start, end))
        if chunks[-1] and sum(lines[i] for i in chunks[-1] + group) > max_lines:
            chunks.append([])
        for i in group:
            if chunks[-1] and sum(lines[k] for k in chunks[-1]) + lines[i] > max_lines:
                chunks.append([])
            chunks[-1].append(i)
    return [chunk for chunk in chunks if chunk] or [[]]


def _tabular(table: Table, layout: Layout, panel: list[int], rows: list[int]) -> str:
    shown = list(range(table.keep)) + panel
    spec = "@{}" + "".join(table.align[j] for j in shown) + "@{}"
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    groups = _header_groups(table, shown)
    if groups:
        cells, rules, position = [], [], 0
        for j in shown:
            group = next((g for g in groups if g[1][0] == j), None)
            if group is not None:
                cells.append(f"\\multicolumn{{{len(group[1])}}}{{c}}{{{escape(group[0])}}}")
                rules.append(f"\\cmidrule(lr){{{position + 1}-{position + len(group[1])}}}")
            elif not any(j in g[1] for g in groups):
                cells.append("")
            position += 1
        out += [" & ".join(cells) + " \\\\", " ".join(rules)]
    names = [table.header[j][1] if isinstance(table.header[j], tuple) else table.header[j] for j in shown]
    out.append(" & ".join(_cell(name, "c" if j >= table.keep else table.align[j]) for name, j in zip(names, shown)) + " \\\\")
    out.append("\\midrule")
    ends = set()
    total = 0
    for count in table.groups:
        total += count
        ends.add(total - 1)
    for i in rows:
        row = table.rows[i]
        out.append(" & ".join(_cell(row[j], table.align[j], table.bold[i][j]) for j in shown) + " \\\\")
        if i in ends and i != rows[-1]:
            out.append("\\midrule")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out)


def _cell(text: str, align: str, bold: bool = False) -> str:
    # "{}" keeps a line that starts with "[" from being read as the optional argument of \\
    lines = [("{}" if line.startswith("[") else "") + escape(line) for line in str(text).split("\n")]
    if bold and lines[0]:
        lines[0] = f"\\textbf{{{lines[0]}}}"
    if len(lines) == 1:
        return lines[0]
    return f"\\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}" + " \\\\ ".join(lines) + "\\end{tabular}"

