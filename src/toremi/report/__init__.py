"""``toremi report``: HTML page and PNG figures from run logs and evaluations.

One module per job: ``load`` reads what runs wrote, ``summary`` turns runs into per-method
statistics and tables, ``figures`` draws the PNGs, ``html`` renders the page (Jinja2 template in
``templates/``, autoescaped) and ``cli`` ties them together (``report``, ``main``). The names that
other modules and the tests import from ``toremi.report`` are re-exported here.
"""

from toremi.report.cli import main, report
from toremi.report.load import load_run
from toremi.report.summary import (diagnosis_rows, final_val_loss, markdown, mean_ci, steps_to_reach,
                                   summarize)

__all__ = ["diagnosis_rows", "final_val_loss", "load_run", "main", "markdown", "mean_ci", "report",
           "steps_to_reach", "summarize"]
