"""The figures `edgepack compare` derives from its measured rows: changes against the baseline and
against each row's matched fine-tune control, size ratios, speed-ups (same CPU only), the speed notes,
the recommendation within --max-drop (edgepack.report.pick) and the --fail-over gate. Each is a field
of the rows (edgepack.report.rows.ResultRow) or of the results, set here."""

from __future__ import annotations

from edgepack.compress.schedule import phase_of
from edgepack.report import hosts, summary, targets
from edgepack.report.notes import add_speed_notes
from edgepack.report.pick import FAST_ENOUGH, Candidate, pick
from edgepack.report.rows import Gate, Recipe, ResultRow, Results

BASELINE, CONTROL = "baseline", "finetune"  # techniques of the reference runs
NOT_COMPRESSED = (BASELINE, CONTROL)


def control_for(row: ResultRow, controls: list[ResultRow], given: ResultRow | None) -> ResultRow | None:
    """The control a compressed row is compared with: the one given (--control), else the control
    fine-tuned with the same recipe (epochs, learning rate and, where recorded, the whole schedule of
    phases from the trained model: a chain's or a polished variant's control trains as long, at the
    same rates), else the only control there is."""
    if given is not None:
        return given if given.ok else None
    key = schedule_key(row.finetune_recipe)
    same = [c for c in controls if key and schedule_key(c.finetune_recipe) == key]
    if same:
        return same[0]
    return controls[0] if len(controls) == 1 else None


def schedule_key(recipe: Recipe | None) -> tuple | None:
    """Every (epochs, learning rate) phase a model was fine-tuned with: its recorded schedule, else
    its one recipe (runs made before schedules were recorded)."""
    if not recipe:
        return None
    phases = recipe.schedule or [[recipe.epochs, recipe.learning_rate]]
    return tuple(phase_of(p) for p in phases)


def derive(results: Results) -> None:
    """Changes, ratios, the recommendation and the gate, from the rows' own measurements."""
    rows = results.rows
    results.imbalance = summary.imbalance_line(results)
    by_id = {r.id: r for r in rows}
    base = by_id.get(results.baseline)
    ok = [r for r in rows if r.ok]
    groups = results.cpu_groups = hosts.cpu_groups(rows)
    mixed = len(groups) > 1  # rows timed on different CPUs: never ranked as one machine's
    if base and base.ok:
        key = "threads_1" if base.latency.p50("threads_1") else "threads_all"
        for r in ok:
            r.delta_pts_vs_baseline = 100 * (r.accuracy - base.accuracy)
            if base.size_gzip_bytes and r.size_gzip_bytes:
                r.size_ratio_gzip = base.size_gzip_bytes / r.size_gzip_bytes
                r.size_ratio_raw = base.size_bytes / r.size_bytes
            same_cpu = not mixed or hosts.cpu_key(r) == hosts.cpu_key(base)
            if base.latency.p50(key) and r.latency.p50(key) and same_cpu:
                r.speedup = base.latency.p50(key) / r.latency.p50(key)
    controls = [by_id[c] for c in results.controls if by_id[c].ok]
    given = by_id.get(results.control)
    for r in ok:
        ctrl = None if r.technique in NOT_COMPRESSED else control_for(r, controls, given)
        if ctrl is None:
            continue
        same = by_id.get(f"{ctrl.variant}/{r.format}")
        ref = same if same is not None and same.ok else ctrl
        r.delta_pts_vs_control = 100 * (r.accuracy - ref.accuracy)
        r.control_ref = ref.id
    cpu = results.environment.get("cpu") or {}
    if mixed:  # a file and its fp32 twin are compared only when one CPU timed both
        for g in groups:
            same = [r for r in rows if hosts.cpu_key(r) == (g.model, tuple(g.isa_flags))]
            add_speed_notes(same, g.int8_paths or {}, FAST_ENOUGH)
    else:
        add_speed_notes(rows, cpu.get("int8_paths") or {}, FAST_ENOUGH)
    opts = results.options
    may_pick = targets.allowed(results)  # with a device target: files that run there and fit
    if opts.max_drop is not None and base and base.ok:
        device = results.target is not None  # host latency says nothing about a device target
        # Controls are not compressed: they measure what the extra fine-tuning alone gives.
        shippable = [r for r in rows if may_pick(r) and r.technique != CONTROL]
        pick = recommend(shippable, opts.max_drop, by_latency=not (mixed or device),
                         size=targets.deployed_bytes if device else None, objective=opts.objective)
        if pick is not None:
            pick.recommended = True
            results.recommended = pick.id
    if opts.fail_over is not None:
        limit = opts.fail_over
        failed = [r.id for r in rows if r.status == "error"
                  or (r.delta_pts_vs_baseline is not None and r.delta_pts_vs_baseline < -limit)]
        results.gate = Gate(fail_over=opts.fail_over, failed=failed, passed=not failed)


def recommend(rows: list[ResultRow], max_drop: float, by_latency: bool = True, size=None,
              objective: str = "latency") -> ResultRow | None:
    """The smallest and fastest row within `max_drop` points of the baseline (edgepack.report.pick).

    objective "latency": among the candidates as fast as the fastest (1-thread timings, all cores if
    missing; round intervals that overlap are a tie, the FAST_ENOUGH band only for timings without
    rounds), the smallest gzip'ed file wins, then the more accurate. objective "size", no latency
    figures (or `by_latency` False: rows timed on different CPUs, or files for a device target): the
    smallest file wins. `size(row)`: the bytes that rank files (default: gzip'ed; a device target:
    flash, edgepack.report.targets).
    """
    cands = [Candidate(r, r.accuracy, (size(r) if size else None) or r.size_gzip_bytes,
                       _timing(r) if by_latency else None)
             for r in rows
             if r.ok and r.delta_pts_vs_baseline is not None
             and r.delta_pts_vs_baseline >= -max_drop - 1e-9 and r.size_gzip_bytes]
    best = pick(cands, objective)
    return None if best is None else best.key


def _timing(row: ResultRow) -> dict | None:
    """The row's timing as edgepack.report.pick reads it (edgepack.timing.Latency.as_dict's keys)."""
    t = row.latency.best()
    return t.model_dump() if t else None
