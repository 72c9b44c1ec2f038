"""Production reports on the inference log: traffic, drift, confidence, live accuracy against
the test set, and version comparison (`build_report`), rendered as HTML with charts, PNG, CSV and
JSON (`dc.reports.render`).

Needs the `reports` dependency group (scipy, scikit-learn, matplotlib); the prediction path does
not import this package.
"""

from dc.reports.build import ReportRequest, build_report
from dc.reports.reference import (
    VersionReference,
    read_reference,
    registry_references,
    served_version,
)

__all__ = [
    "ReportRequest",
    "VersionReference",
    "build_report",
    "read_reference",
    "registry_references",
    "served_version",
]
