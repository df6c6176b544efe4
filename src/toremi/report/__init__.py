"""``toremi report``: HTML page and PNG figures from run logs and evaluations.

One module per job: ``load`` reads what runs wrote, ``summary`` turns runs into per-method
statistics and tables, ``figures`` draws the PNGs, ``html`` renders the page (Jinja2 template in
``templates/``, autoescaped) and ``cli`` ties them together (``report``, ``main``). The names other
modules and the tests use are re-exported here.
"""

from toremi.report.cli import main, report
from toremi.report.load import first_per_label, load_run, method_label, noise_of
from toremi.report.summary import (diagnosis_rows, final_val_loss, fmt, markdown, mean_ci,
                                   steps_to_reach, summarize, tables)

__all__ = ["diagnosis_rows", "final_val_loss", "first_per_label", "fmt", "load_run", "main",
           "markdown", "mean_ci", "method_label", "noise_of", "report", "steps_to_reach",
           "summarize", "tables"]
