"""``tlbreplay calibrate``: hold the engine against a real capture whose workload is known.

A lab capture (``tlbreplay lab run``) records its guest's workload in the sidecar's ``[lab]``
table: which guest-physical range each vCPU sweeps, one write per 4 KiB page, and how many
sweeps per second it made. Calibration rebuilds that workload as an ``accesses`` frame, replays
it on the sidecar's VM with the policy of the capture's kernel (``linux-6.18`` for 6.18) and the
capture's MMU kind, and sets each simulated counter beside the one observed in the trace.

Observed counters, all restricted to the guest's RAM and to the numa_balancing=1 window (the
two ``tracing_mark_write`` markers of the lab, cut to whole epochs):

* remote TLB flushes: KVM's own VM stat ``remote_tlb_flush_requests`` (kvm_flush_remote_tlbs()
  calls, read with KVM_GET_STATS_FD by the lab over its window, in ``NAME.capture.json``).
* notifier calls / bytes: ``kvm:kvm_unmap_hva_range`` overlapping guest RAM (bytes clipped),
  one per ``mmu_notifier_invalidate_range_start()`` (virt/kvm/kvm_main.c).
* SPTE zaps: on a TDP MMU ``kvmmmu:kvm_tdp_mmu_spte_changed`` present -> not present; on a
  shadow MMU no tracepoint marks a leaf zap (``kvm_zap_rmap()``), so zaps are counted by their
  re-installs, ``kvmmmu:kvm_mmu_set_spte`` (the lab guest touches every page again within
  milliseconds, and ``direct_pte_prefetch()`` only fills non-present SPTEs).
* guest refaults: ``kvm:kvm_page_fault`` (TDP) or ``kvmmmu:kvm_mmu_spte_requested`` (shadow).
* numa_pte_updates, numa_huge_pte_updates, numa_hint_faults: /proc/vmstat is host-wide, so the
  capture samples it every 5 ms; increments are attributed to the VM's own windows (its scan
  bursts for PTE updates, scan burst to end of the refault burst for hinting faults) minus the
  host's background rate outside those windows.
* scans and cadence: task_numa_work() bursts (``sched_skip_vma_numa`` / notifiers from the
  VMM's threads, < 100 ms apart) that reach guest RAM; their count, the first one's delay
  after numa_balancing=1 and the mean interval.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.analyze import observed_events as obs_events
from pipeline.analyze.calibrate_input import (
    PAGE_4K,
    CalibrationInput,
    LabWorkload,
    policy_for_kernel,
)
from pipeline.analyze.calibrate_observed import (
    COUNTERS,
    PER_SCAN,
    guest_installs,
    load_input,
    observed,
    population_in_trace,
    resolve_sidecar,
    scan_cadence,
    with_per_scan,
)
from pipeline.ingest import capture_facts as hosting_facts
from pipeline.ingest import trace_facts
from pipeline.model import hosting as model_hosting
from pipeline.model.hosting import VmHosting
from pipeline.replay.params import ReplayParams
from pipeline.replay.workload import KnownWorkload


def workload_accesses(
    vm: dict[str, Any],
    lab: LabWorkload,
    n_epochs: int,
    epoch_ms: int,
    prefix: Sequence[Sequence[int]] | None = None,
) -> pl.DataFrame:
    """The lab guest's sweeps as table ``accesses``. Each vCPU writes the 4 KiB pages of its
    range in ascending order, over and over, at ``passes_per_s`` sweeps per second
    (:func:`sweep_windows`): an epoch covers the whole range ``nr_accesses`` times when the
    vCPU makes at least one sweep per epoch, else only the part it reached (ADR 0362).
    ``prefix`` (vCPU -> epoch -> pages, observed_events.populated_prefix()) gives the first
    sweep, while the guest populates its RAM: the pages first touched in each epoch."""
    rows: dict[str, list[Any]] = {
        k: [] for k in ("vm", "epoch", "vcpu", "gfn_start", "nr_pages", "nr_accesses", "write")
    }
    for vcpu, (start, end, rate) in enumerate(
        zip(lab.touch_start_gpa, lab.touch_end_gpa, lab.passes_per_s, strict=True)
    ):
        nr_pages = (end - start) // PAGE_4K
        populated = None if prefix is None else prefix[vcpu]
        for epoch, windows in enumerate(
            sweep_windows(nr_pages, rate * epoch_ms / 1000, n_epochs, populated)
        ):
            for first, count, times in windows:
                rows["vm"].append(vm["vm"])
                rows["epoch"].append(epoch)
                rows["vcpu"].append(vcpu)
                rows["gfn_start"].append(start // PAGE_4K + first)
                rows["nr_pages"].append(count)
                rows["nr_accesses"].append(times)
                rows["write"].append(True)
    from pipeline.schema import conform

    frame = pl.from_arrow(conform(pl.DataFrame(rows), "accesses"))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("vm", "epoch", "vcpu", "gfn_start")


def sweep_windows(
    nr_pages: int,
    sweeps_per_epoch: float,
    n_epochs: int,
    populated: Sequence[int] | None = None,
) -> list[list[tuple[int, int, int]]]:
    """Per epoch, the (first page, pages, times) a vCPU sweeping ``nr_pages`` in ascending
    order touches (ADR 0362):

    * at one sweep per epoch or more: the whole range, ``round(sweeps_per_epoch)`` times;
    * below: the next ``sweeps_per_epoch * nr_pages`` pages from where it was, wrapping to
      the range's start (two windows), once. The phase at the window's start is not
      recorded; the sweep starts at the range's start. A guest that populated its RAM
      before the window has every page mapped then: the first epoch covers the range;
    * while it populates (``populated``: pages touched by each epoch's end, a prefix): the
      pages first touched in the epoch (the page it is at, when none was), then sweeps from
      the range's start once the prefix is whole.
    """
    out: list[list[tuple[int, int, int]]] = []
    if nr_pages <= 0:
        return [[] for _ in range(n_epochs)]
    pos = 0.0
    done_before = 0
    for epoch in range(n_epochs):
        if populated is not None and done_before < nr_pages:
            done = min(nr_pages, int(populated[epoch]))
            if done > done_before:
                out.append([(done_before, done - done_before, 1)])
            elif done > 0:
                out.append([(done - 1, 1, 1)])
            else:
                out.append([])
            done_before = done
            continue
        if sweeps_per_epoch >= 1.0 or (epoch == 0 and populated is None):
            # the first epoch of a guest populated before the window: every page has its
            # SPTE, as if touched in it
            out.append([(0, nr_pages, max(1, round(sweeps_per_epoch)))])
            continue
        count = max(1, round(sweeps_per_epoch * nr_pages))
        first = int(pos) % nr_pages
        head = min(count, nr_pages - first)
        windows = [(first, head, 1)]
        if count > head:
            windows.append((0, count - head, 1))
        out.append(windows)
        pos = (pos + sweeps_per_epoch * nr_pages) % nr_pages
    return out


def host_runnable(lab: LabWorkload) -> float:
    """Other runnable tasks on a vCPU thread's CPU (model.hosting.host_runnable())."""
    return model_hosting.host_runnable(lab.facts.vcpu_cpu_share)


def lab_hosting(inp: CalibrationInput, *, modelled: bool = True) -> VmHosting:
    """The lab VM's process and host facts for the engine (ADR 0320), built by the same
    :func:`pipeline.ingest.capture_facts.build_hosting` as ``tlbreplay ingest``'s hosting.parquet
    (ADR 0330). ``modelled=False`` gives the defaults (the engine before ADR 0320), for the
    before/after comparison."""
    vm = inp.vm
    if not modelled:
        return inferred_hosting(inp)
    return hosting_facts.build_hosting(
        vm, inp.lab.facts, inp.capture, inp.ftrace, (inp.t_on_ns, inp.t_end_ns)
    )


def inferred_hosting(inp: CalibrationInput) -> VmHosting:
    """The VM's facts without capture.json and the lab's measurements (ADR 0365,
    :func:`pipeline.ingest.trace_facts.inferred_hosting`): the default VMM profile, the
    vCPUs' CPU share from the ``[lab]`` workload, their runtime at the start from the first
    scan's delay after numa_balancing went on."""
    workload = {
        "passes_per_s": inp.lab.passes_per_s,
        "touch_start_gpa": inp.lab.touch_start_gpa,
        "touch_end_gpa": inp.lab.touch_end_gpa,
        "guest_page_bytes": inp.lab.guest_page_bytes,
        "window_s": inp.lab.window_s,
    }
    hosting, _, _ = trace_facts.inferred_hosting(inp.vm, inp.ftrace, workload, inp.t_on_ns)
    return hosting


def lab_replay(
    inp: CalibrationInput, params: ReplayParams, *, hosting: bool = True, source: str = "[lab]"
) -> KnownWorkload:
    """The lab workload of a capture as the engine replays it, for ``calibrate`` and for
    ``replay`` of its DATASET alike (ADR 0381): the sweeps over the numa_balancing=1 window cut
    to whole epochs of ``params.epoch_ms``, limited by the guest's first touches when the trace
    holds them; the VM's MMU and guest page size; the capture's hosting (``hosting`` False: the
    engine's defaults); vCPUs run when they have accesses (``busy_vcpus`` off unless given).
    Other fields of ``params`` (workers, memory bound, knobs) are kept."""
    vm = inp.vm
    epoch_ms = params.epoch_ms
    n_epochs = round((inp.t_end_ns - inp.t_on_ns) / (epoch_ms * 1_000_000))
    prefix = None
    if population_in_trace(inp):
        # the guest's first touches, as the trace shows them (ADR 0510)
        prefix = obs_events.populated_prefix(
            guest_installs(inp),
            [(s // PAGE_4K, e // PAGE_4K) for s, e in zip(
                inp.lab.touch_start_gpa, inp.lab.touch_end_gpa, strict=True)],
            inp.t_on_ns,
            epoch_ms * 1_000_000,
            n_epochs,
        )  # fmt: skip
    accesses = workload_accesses(vm, inp.lab, n_epochs, epoch_ms, prefix)
    given = params.hosting if params.hosting else (lab_hosting(inp, modelled=hosting),)
    run = replace(
        params,
        mmu=params.mmu or str(vm["mmu"]),
        shadow_guest_2m=params.shadow_guest_2m or inp.lab.guest_page_bytes >= (2 << 20),
        hosting=given,
        busy_vcpus=bool(params.busy_vcpus),
    )
    return KnownWorkload(accesses, run, n_epochs, source)


def dataset_workload(dataset: Path, params: ReplayParams) -> KnownWorkload | str:
    """``replay``'s :data:`pipeline.replay.workload.WorkloadSource`: the [lab] workload of a
    DATASET ingested from a lab capture (:func:`lab_replay`, ``--no-hosting`` honoured), or
    why its trace's refaults are replayed instead."""
    from pipeline.schema import read_manifest

    manifest = read_manifest(dataset)
    text = (manifest.get("parameters") or {}).get("vm_config")
    if not text:
        return "no sidecar recorded in the DATASET"
    sidecar = resolve_sidecar(str(text), dataset)
    if not sidecar.is_file():
        return f"sidecar {text} not found"
    try:
        doc = tomllib.loads(sidecar.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return f"cannot read sidecar {text}: {exc}"
    if "lab" not in doc:
        return f"sidecar {text} has no [lab] table"
    inp = load_input(dataset, sidecar, None, params.epoch_ms)
    return lab_replay(inp, params, hosting=params.dataset_hosting, source=str(text))


def simulated(
    inp: CalibrationInput, policy: str, epoch_ms: int = 100, *, hosting: bool = True
) -> tuple[dict[str, float], pl.DataFrame]:
    """Replay the lab workload under ``policy``; the counters of :data:`COUNTERS` and scans.

    ``hosting`` (default) gives the engine the capture's process and host facts
    (:func:`lab_hosting`, ADR 0320); False withholds capture.json and the lab's
    measurements (:func:`inferred_hosting`, ADR 0365).
    """
    from pipeline.replay.runner import replay_frames

    known = lab_replay(inp, ReplayParams(epoch_ms=epoch_ms), hosting=hosting)
    result = replay_frames(
        inp.vms, known.accesses, [policy], known.params, seed=0, span_epochs=known.n_epochs
    )
    epochs = result.epochs
    total = {
        name: float(epochs[name].sum()) if epochs.height else 0.0
        for name in (
            "numa_pte_updates",
            "numa_huge_pte_updates",
            "numa_hint_faults",
            "mmu_notifier_invalidations",
            "notifier_bytes",
            "spte_zapped",
            "ept_violations",
            "remote_tlb_flushes",
        )
    }
    scans = result.scans.filter(pl.col("notifiers") > 0) if result.scans.height else result.scans
    out = {
        "remote_tlb_flushes": total["remote_tlb_flushes"],
        "notifier_calls": total["mmu_notifier_invalidations"],
        "notifier_bytes": total["notifier_bytes"],
        "spte_zapped": total["spte_zapped"],
        "refaults": total["ept_violations"],
        "numa_pte_updates": total["numa_pte_updates"],
        "numa_huge_pte_updates": total["numa_huge_pte_updates"],
        "numa_hint_faults": total["numa_hint_faults"],
    }
    starts = [int(t) * 1_000_000 for t in scans["t_ms"].to_list()] if scans.height else []
    out.update(scan_cadence(starts, 0))
    return out, result.scans


def relative_error(sim: float, obs: float) -> float:
    if math.isnan(sim) or math.isnan(obs):
        return float("nan")
    if obs == 0:
        return 0.0 if sim == 0 else float("inf")
    return (sim - obs) / obs


def pooled(tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The totals of several :func:`calibrate` tables added up, for the counters that add up
    over captures (:data:`PER_SCAN` and ``scans``): a count the engine predicts in expectation,
    such as the need_resched() yields in KVM flushes, is judged over all captures rather than
    draw by draw. NaN (``n/a``) when any capture has no value."""
    names = [*PER_SCAN, "scans"]
    obs = dict.fromkeys(names, 0.0)
    sim = dict.fromkeys(names, 0.0)
    for table in tables:
        for row in table.iter_rows(named=True):
            if row["counter"] in obs:
                obs[row["counter"]] += float(row["observed"])
                sim[row["counter"]] += float(row["simulated"])
    return pl.DataFrame(
        {
            "counter": names,
            "observed": [obs[c] for c in names],
            "simulated": [sim[c] for c in names],
            "rel_error": [relative_error(sim[c], obs[c]) for c in names],
        }
    )


def calibrate(
    dataset: Path,
    *,
    sidecar: Path | None = None,
    vmstat: Path | None = None,
    policy: str | None = None,
    epoch_ms: int = 100,
    hosting: bool = True,
) -> pl.DataFrame:
    """One row per counter: observed, simulated, relative error (sim - obs) / obs."""
    inp = load_input(dataset, sidecar, vmstat, epoch_ms)
    policy = policy or policy_for_kernel(inp.vm.get("kernel"))
    obs, background = observed(inp)
    sim, _ = simulated(inp, policy, epoch_ms, hosting=hosting)
    bg = with_per_scan({**background, "scans": obs["scans"]})
    obs, sim = with_per_scan(obs), with_per_scan(sim)
    names = [*COUNTERS, *(f"{n}_per_scan" for n in PER_SCAN)]
    reasons = [na_reason(c, inp.unavailable) for c in names]
    return pl.DataFrame(
        {
            "counter": names,
            "observed": [obs[c] for c in names],
            "simulated": [sim[c] for c in names],
            "rel_error": [relative_error(sim[c], obs[c]) for c in names],
            "host_background": [0.0 if c == "scans" else bg.get(c, 0.0) for c in names],
            "policy": [policy] * len(names),
            "na_reason": pl.Series(reasons, dtype=pl.Utf8),
        }
    )


def na_reason(counter: str, unavailable: Mapping[str, str]) -> str | None:
    """Why ``counter`` (or ``<counter>_per_scan``) cannot be observed; None if it can. A per
    scan value needs its counter and the scans."""
    base = counter.removesuffix("_per_scan")
    if base in unavailable:
        return unavailable[base]
    if counter != base and "scans" in unavailable:
        return unavailable["scans"]
    return None
