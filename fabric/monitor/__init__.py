"""Model monitoring with Evidently: drift and quality of what a served model version answered, against the data
commit it was trained on.

Python, with the CLI equivalent under each line::

    from fabric.monitor import MonitorConfig, check, workspace_dir

    result = check("breast-cancer", last=1000)        # the champion's last 1000 logged rows
    #   fabric monitor check breast-cancer --last 1000
    result = check("breast-cancer", version="3", since="1h", out_dir="reports/")
    #   fabric monitor report breast-cancer --version 3 --since 1h --out reports/
    print(result.drifted_columns, result.drift_share, result.quality or result.quality_note)
    #   fabric monitor ui          (Evidently's UI on workspace_dir(): drift share and quality over time)

Each check saves one Evidently snapshot (HTML and JSON), logs it to the MLflow experiment ``fabric-monitor`` and
adds it to the model's project in the Evidently workspace.
"""

from fabric.monitor.check import CheckResult, check, run_check
from fabric.monitor.config import MonitorConfig, MonitorError, parse_span
from fabric.monitor.reports import workspace_dir

__all__ = ["CheckResult", "MonitorConfig", "MonitorError", "check", "parse_span", "run_check", "workspace_dir"]
