"""The comparison report: every variant against the original and a fine-tuned control.

`compare()` evaluates run folders and exported files and writes report.md, report.html,
results.json (schema in edgepack.report.compare), results.csv and PNG plots.
"""

from edgepack.report.compare import SCHEMA_VERSION, CompareOptions, GateFailed, compare

__all__ = ["SCHEMA_VERSION", "CompareOptions", "GateFailed", "compare"]
