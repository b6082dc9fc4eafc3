"""Reports and comparisons of runs, read from run folders alone.

* :mod:`~mnistlab.report.runfolder` -- what a run folder holds, read tolerantly
  (``test_predictions.npz`` is written at the end of each run for the report);
* :mod:`~mnistlab.report.plots` -- the figures, with matplotlib, no display needed;
* :mod:`~mnistlab.report.html` -- ``report.html``, self-contained, images embedded;
* :mod:`~mnistlab.report.compare` -- ``mnistlab compare``: a table and a plot of several runs.

Nothing here needs the dataset or a model, so runs copied from any machine work.
"""

from .compare import RunRow, compare_runs, find_runs, format_table, write_compare_plot
from .html import Report, write_report, write_run_report
from .runfolder import PREDICTIONS_FILE, RunFolder, RunFolderError, read_run, save_test_predictions

__all__ = [
    "PREDICTIONS_FILE",
    "Report",
    "RunFolder",
    "RunFolderError",
    "RunRow",
    "compare_runs",
    "find_runs",
    "format_table",
    "read_run",
    "save_test_predictions",
    "write_compare_plot",
    "write_report",
    "write_run_report",
]
