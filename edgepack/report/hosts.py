"""Which CPU timed each row, so latencies from different CPUs are never ranked as one machine's.

Every evaluated row records `host` (edgepack.report.env.host: node name, CPU model, ISA labels, int8
paths). Rows timed on CPUs of the same model and ISA labels form one group; a report with more than
one group (rows evaluated on different machines) labels each latency with its group, computes
"x faster" only against a baseline on the same CPU, and recommends by size and accuracy alone.
"""

from __future__ import annotations

from edgepack.report.rows import CpuGroup, ResultRow


def cpu_key(row: ResultRow) -> tuple | None:
    """(CPU model, ISA labels) of the host that evaluated `row`; None when it was not evaluated."""
    h = row.host
    return None if not h else (h.model, tuple(h.isa_flags))


def cpu_groups(rows: list[ResultRow]) -> list[CpuGroup]:
    """The distinct CPUs of the rows, in row order: {label "[1]", model, isa_flags, int8_paths, nodes}."""
    groups: dict[tuple, CpuGroup] = {}
    for r in rows:
        key = cpu_key(r)
        if key is None:
            continue
        g = groups.setdefault(key, CpuGroup(label=f"[{len(groups) + 1}]", model=key[0],
                                            isa_flags=list(key[1]), int8_paths=r.host.int8_paths, nodes=[]))
        if r.host.node not in g.nodes:
            g.nodes.append(r.host.node)
    return list(groups.values())


def label(row: ResultRow, groups: list[CpuGroup]) -> str:
    """" [k]" naming the row's CPU group when the rows come from more than one CPU, else ""."""
    if len(groups) < 2 or cpu_key(row) is None:
        return ""
    key = cpu_key(row)
    return next(f" {g.label}" for g in groups if (g.model, tuple(g.isa_flags)) == key)


def lines(groups: list[CpuGroup]) -> list[str]:
    """Report header lines naming each CPU group (none when all rows come from one CPU)."""
    if len(groups) < 2:
        return []
    named = "; ".join(f"{g.label} {g.model} ({', '.join(g.isa_flags) or 'no ISA flags read'}) on "
                      f"{', '.join(str(n) for n in g.nodes)}" for g in groups)
    return [f"**Latencies come from {len(groups)} different CPUs** (labelled in the tables): {named}. "
            "x faster compares only rows timed on the baseline's CPU, and the recommendation ranks by size "
            "and accuracy alone."]
