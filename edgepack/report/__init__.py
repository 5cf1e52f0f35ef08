"""The comparison report: every variant against the original and a fine-tuned control.

`compare()` evaluates run folders and exported files and writes report.md, report.html,
results.json (schema in edgepack.report.compare, typed in edgepack.report.rows: read it back with
`read_results`), results.csv and PNG plots. The comparison needs the toolchain extra (pydantic);
without it this package still gives its numpy-only parts (pick, stats, env, weights) to the
runtime-only install, whose command-line parser imports them through edgepack.optimize.
"""

try:
    from edgepack.report.compare import GateFailed, compare
    from edgepack.report.options import CompareOptions
    from edgepack.report.rows import SCHEMA_VERSION, ResultRow, Results, read_results
except ModuleNotFoundError as e:  # the runtime-only install: `edgepack compare` says what to install
    if e.name != "pydantic":
        raise

__all__ = ["SCHEMA_VERSION", "CompareOptions", "GateFailed", "ResultRow", "Results", "compare",
           "read_results"]
