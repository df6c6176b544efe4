"""``toremi report``: HTML page and PNG figures from run logs and evaluations.

One module per job: ``toremi.runs`` reads what runs wrote, ``summary`` turns runs into per-method
statistics and tables, ``figures`` draws the PNGs, ``html`` renders the page (Jinja2 template in
``templates/``, autoescaped), ``recompute`` rebuilds a grid's results from its committed per-run
files, and ``cli`` ties them together (``report``, ``main``).
"""

from toremi.report.cli import main, report
from toremi.report.summary import diagnosis_rows, markdown, mean_ci, steps_to_reach, summarize

__all__ = ["diagnosis_rows", "main", "markdown", "mean_ci", "report", "steps_to_reach", "summarize"]
