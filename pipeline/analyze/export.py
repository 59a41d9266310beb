"""`tlbreplay export`: a RESULTS directory as a Perfetto timeline or a memory heat map.

``--perfetto``: Chrome trace-event JSON (the "JSON Array/Object Format" of the Trace Event
Format document, which ui.perfetto.dev and chrome://tracing open; ADR 0433). One process per
(policy, VM), named ``<policy> / <vm>``; one thread (track) per vCPU. On it:

- ``task_numa_work`` instants where that vCPU's task ran a scan (``scans``: chunks,
  notifiers, PTE updates and the scanned gfn window as args);
- counters per vCPU and epoch: ``vCPU n faults`` (EPT violations, NUMA hinting faults) and
  ``vCPU n shootdown IPIs`` (``vcpu_epochs``);
- counters per VM and epoch: ``KVM shootdowns`` (remote flushes), ``MMU notifiers``,
  ``SPTEs zapped`` (``epochs``, page sizes together).

A counter drops back to 0 at the end of its epoch, so a quiet epoch reads as 0, not as the
last value. Times are the replay's model time in microseconds (``ts``).

``--heatmap``: a damo-style heat map of one VM's guest memory over time, PNG: the workload's
accesses (the DATASET), then per policy the pages task_numa_work scanned (the ``scans``
window), gfn bins x epochs (:mod:`pipeline.analyze.heatmap` draws).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from pipeline.analyze.views import connect
from pipeline.errors import OutputError, QueryError

#: Chrome trace-event phases this writer emits (validated by the tests).
PHASES = ("M", "i", "C")

EPOCH_SQL = """
SELECT e.policy, e.vm, e.epoch, min(e.t_ms) AS t_ms,
    sum(e.remote_tlb_flushes)::BIGINT AS flushes,
    sum(e.mmu_notifier_invalidations)::BIGINT AS notifiers,
    sum(e.spte_zapped)::BIGINT AS zapped
FROM epochs AS e JOIN run_policies USING (policy)
GROUP BY e.policy, e.vm, e.epoch, policy_rank
ORDER BY policy_rank, e.vm, e.epoch
"""
VCPU_SQL = """
SELECT v.policy, v.vm, v.vcpu, v.epoch, v.t_ms, v.ept_violations, v.numa_hint_faults,
    v.shootdown_ipis
FROM vcpu_epochs AS v JOIN run_policies USING (policy)
ORDER BY policy_rank, v.vm, v.vcpu, v.epoch
"""
SCAN_SQL = """
SELECT s.policy, s.vm, s.vcpu, s.epoch, s.t_ms, s.chunks, s.notifiers, s.nr_pte_updates,
    s.virt_pages, s.gfn_start, s.gfn_end
FROM scans AS s JOIN run_policies USING (policy)
ORDER BY policy_rank, s.vm, s.t_ms, s.vcpu
"""
PROCESS_SQL = """
SELECT r.policy, v.vm, v.vcpus
FROM run_policies AS r, (SELECT vm, max(vcpus) AS vcpus FROM (
    SELECT vm, vcpus FROM vms
    UNION ALL SELECT vm, max(vcpu) + 1 FROM vcpu_epochs GROUP BY vm
    UNION ALL SELECT vm, max(vcpu) + 1 FROM scans GROUP BY vm
) GROUP BY vm) AS v
ORDER BY r.policy_rank, v.vm
"""


def _us(t_ms: float) -> float:
    return float(t_ms) * 1000.0


def _counter(
    pid: int, name: str, t_ms: float, end_ms: float, args: dict[str, int]
) -> Iterator[dict[str, Any]]:
    """A counter's value over one epoch: set at its start, back to 0 at its end."""
    yield {"name": name, "ph": "C", "ts": _us(t_ms), "pid": pid, "tid": 0, "args": args}
    zero = dict.fromkeys(args, 0)
    yield {"name": name, "ph": "C", "ts": _us(end_ms), "pid": pid, "tid": 0, "args": zero}


def trace_events(con: duckdb.DuckDBPyConnection, epoch_ms: int) -> list[dict[str, Any]]:
    """Every trace event of the run on ``con``, in a fixed order (processes, then time)."""
    events: list[dict[str, Any]] = []
    pids: dict[tuple[str, str], int] = {}
    for policy, vm, vcpus in con.sql(PROCESS_SQL).fetchall():
        pid = len(pids) + 1
        pids[(str(policy), str(vm))] = pid
        meta = {"ph": "M", "pid": pid, "tid": 0, "ts": 0}
        events.append({**meta, "name": "process_name", "args": {"name": f"{policy} / {vm}"}})
        events.append({**meta, "name": "process_sort_index", "args": {"sort_index": pid}})
        for vcpu in range(int(vcpus or 0)):
            thread = {**meta, "tid": vcpu + 1}
            events.append({**thread, "name": "thread_name", "args": {"name": f"vCPU {vcpu}"}})
            events.append({**thread, "name": "thread_sort_index", "args": {"sort_index": vcpu + 1}})
    timed: list[dict[str, Any]] = []
    for policy, vm, _epoch, t_ms, flushes, notifiers, zapped in con.sql(EPOCH_SQL).fetchall():
        pid = pids[(str(policy), str(vm))]
        end = t_ms + epoch_ms
        timed += _counter(pid, "KVM shootdowns", t_ms, end, {"remote_tlb_flushes": flushes})
        timed += _counter(pid, "MMU notifiers", t_ms, end, {"invalidations": notifiers})
        timed += _counter(pid, "SPTEs zapped", t_ms, end, {"spte_zapped": zapped})
    for policy, vm, vcpu, _e, t_ms, ept, hint, ipis in con.sql(VCPU_SQL).fetchall():
        pid, end = pids[(str(policy), str(vm))], t_ms + epoch_ms
        faults = {"ept_violations": int(ept), "numa_hint_faults": int(hint)}
        timed += _counter(pid, f"vCPU {vcpu} faults", t_ms, end, faults)
        timed += _counter(pid, f"vCPU {vcpu} shootdown IPIs", t_ms, end, {"ipis": int(ipis)})
    for row in con.sql(SCAN_SQL).fetchall():
        policy, vm, vcpu, _e, t_ms, chunks, notifiers, ptes, virt, g0, g1 = row
        timed.append(
            {
                "name": "task_numa_work",
                "cat": "numa",
                "ph": "i",
                "s": "t",
                "ts": _us(t_ms),
                "pid": pids[(str(policy), str(vm))],
                "tid": int(vcpu) + 1,
                "args": {
                    "chunks": int(chunks),
                    "notifiers": int(notifiers),
                    "nr_pte_updates": int(ptes),
                    "virt_pages": int(virt),
                    "gfn_start": int(g0),
                    "gfn_end": int(g1),
                },
            }
        )
    timed.sort(key=lambda e: (e["ts"], e["pid"], e["tid"], e["name"]))
    return events + timed


def _epoch_ms(con: duckdb.DuckDBPyConnection) -> int:
    ((value,),) = con.sql(
        "SELECT coalesce(CAST(manifest ->> 'epoch_ms' AS BIGINT), 100) FROM results_manifest"
    ).fetchall()
    return int(value)


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file beside it (nothing partial is left)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputError(path, f"no directory `{path.parent}`")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def export_perfetto(results: Path, out: Path) -> int:
    """Write ``out`` (trace-event JSON) for ``results``; return the number of events."""
    con, run = connect(results)
    try:
        if run.sweep:
            raise QueryError("a sweep RESULTS has no single timeline; export one replay")
        events = trace_events(con, _epoch_ms(con))
    finally:
        con.close()
    doc = {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"tool": "tlbreplay", "results": Path(results).name},
    }
    write_atomic(out, (json.dumps(doc, separators=(",", ":")) + "\n").encode())
    return len(events)


HEAT_SCANS_SQL = """
SELECT s.policy, s.epoch, s.gfn_start, s.gfn_end FROM scans AS s
JOIN run_policies USING (policy) WHERE s.vm = ? ORDER BY policy_rank, s.epoch, s.gfn_start
"""


def heat_grids(
    con: duckdb.DuckDBPyConnection, vm: str | None, *, gfn_bins: int = 128, time_bins: int = 200
) -> tuple[str, np.ndarray, list[tuple[str, np.ndarray]], tuple[int, int]]:
    """(vm, edges, [(panel title, gfn_bins x time_bins grid)], (epochs, pages)) for the heat
    map: the dataset's accesses, then each policy's scanned pages."""
    vms = {str(v): int(p) for v, p in con.sql("SELECT vm, mem_bytes // 4096 FROM vms").fetchall()}
    if not vms:
        raise QueryError("the RESULTS' DATASET has no VMs; nothing to draw")
    name = vm if vm is not None else sorted(vms)[0]
    if name not in vms:
        msg = f"no VM `{name}`; choose from: {', '.join(sorted(vms))}"
        raise QueryError(msg)
    pages = vms[name]
    ((last,),) = con.execute(
        "SELECT coalesce(max(epoch), 0) FROM ("
        "SELECT epoch FROM accesses WHERE vm = ? UNION ALL SELECT epoch FROM epochs WHERE vm = ?)",
        [name, name],
    ).fetchall()
    epochs = int(last) + 1
    t_bins = min(time_bins, epochs)
    edges = np.linspace(0, pages, gfn_bins + 1)

    def add(grid: np.ndarray, epoch: int, g0: int, g1: int, weight: float) -> None:
        col = min(epoch * t_bins // epochs, t_bins - 1)
        lo = np.clip(edges[:-1], g0, g1)
        hi = np.clip(edges[1:], g0, g1)
        grid[:, col] += (hi - lo) * weight

    access = np.zeros((gfn_bins, t_bins))
    rows = con.execute(
        "SELECT epoch, gfn_start, nr_pages, nr_accesses FROM accesses WHERE vm = ?", [name]
    ).fetchall()
    for epoch, g0, n, k in rows:
        add(access, int(epoch), int(g0), int(g0) + int(n), float(k) / max(int(n), 1))
    panels = [(f"{name}: accesses (the workload)", access)]
    order = con.sql("SELECT policy FROM run_policies ORDER BY policy_rank").fetchall()
    policies = [str(p) for (p,) in order]
    grids = {p: np.zeros((gfn_bins, t_bins)) for p in policies}
    for policy, epoch, g0, g1 in con.execute(HEAT_SCANS_SQL, [name]).fetchall():
        add(grids[str(policy)], int(epoch), int(g0), int(g1), 1.0)
    panels += [(f"{p}: pages scanned by task_numa_work", grids[p]) for p in policies]
    return name, edges, panels, (epochs, pages)


def export_heatmap(results: Path, out: Path, *, vm: str | None = None) -> Path:
    """Write the heat map PNG of ``vm`` (default: the first VM by name) to ``out``."""
    from pipeline.analyze.heatmap import plot_heatmap

    con, run = connect(results)
    try:
        if run.sweep:
            raise QueryError("a sweep RESULTS has no single timeline; export one replay")
        name, _edges, panels, (epochs, pages) = heat_grids(con, vm)
        epoch_ms = _epoch_ms(con)
    finally:
        con.close()
    tmp = Path(out).with_name(f".{Path(out).name}.tmp.png")
    if Path(out).is_dir():
        raise OutputError(out, "is a directory; give a file name")
    try:
        plot_heatmap(panels, tmp, seconds=epochs * epoch_ms / 1000, pages=pages, vm=name)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return Path(out)
