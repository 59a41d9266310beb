"""The README's sentences about its generated tables, written from the same numbers.

The README's results and calibration tables are generated (ADR 0431); the prose that reads
them ("rfc-v2 makes 9x more unmap calls", "KVM flushes per cell -22% to +17%") is generated
here from the very values of those tables, so no number in it is typed and a comparison
word ("more", "fewer", "within") follows the data. A claim whose direction no longer holds
is not printed with its old explanation: the sentence that states the new direction is
printed instead, without the explanation (which was about the old direction).

Two blocks: ``findings`` (under the results table) and ``calibration-findings`` (under the
calibration table). Inputs are plain mappings so that tests can feed any numbers:

- ``results``: ``{policy: {"<spec>:<counter>": int}}`` (readme_tables.results_values);
- ``cells``: ``{cell name: {counter: (observed, simulated)}}`` (readme_tables.
  calibration_values), cell names as :func:`readme_tables.cell_name` gives them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping

from pipeline.analyze.output import count_text

Results = Mapping[str, Mapping[str, int]]
Cells = Mapping[str, Mapping[str, tuple[float, float]]]

#: 4 KiB pages per MiB.
PAGES_4K_PER_MIB = 256
#: The README's line width.
WIDTH = 96
#: Small counts in words.
WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def wrap(lines: list[str]) -> list[str]:
    """Re-flow ``lines`` to :data:`WIDTH` columns. A paragraph starts at a line beginning
    ``- `` or ``  - `` (a bullet) and after an empty line; other lines continue it. Bullets
    hang their continuation under their text; an indented paragraph keeps its indent."""
    paragraphs: list[list[str]] = []
    fresh = True
    for line in lines:
        if not line:
            paragraphs.append([])
            fresh = True
            continue
        if fresh or (
            line.lstrip().startswith("- ") and line[: len(line) - len(line.lstrip())] in ("", "  ")
        ):
            paragraphs.append([line])
        else:
            paragraphs[-1].append(line.strip())
        fresh = False
    out: list[str] = []
    for para in paragraphs:
        if not para:
            out.append("")
            continue
        first = para[0]
        indent = first[: len(first) - len(first.lstrip())]
        hang = indent + ("  " if first.lstrip().startswith("- ") else "")
        text = " ".join([first.strip(), *para[1:]])
        out += textwrap.wrap(
            text,
            WIDTH,
            initial_indent=indent,
            subsequent_indent=hang,
            break_on_hyphens=False,
            break_long_words=False,
        )
    return out


def _n(value: float) -> str:
    return count_text(round(value))


def _ratio(a: float, b: float) -> str:
    """``a`` as a multiple of ``b``: ``1.3x``, ``9x``."""
    r = a / b
    return f"{r:.1f}x" if r < 3 else f"{r:.0f}x"


def _count_word(n: int) -> str:
    return WORDS[n] if n < len(WORDS) else str(n)


def _pct(obs: float, sim: float) -> float:
    return (sim / obs - 1) * 100


def _more(a: float, b: float) -> str:
    return "more" if a > b else "fewer" if a < b else "as many"


def pinned_vm(results: Results, cells: Cells) -> list[str]:
    """The RFC's case (`vfio-pinned`): who takes the shootdowns to zero, what upstream's
    fix costs, and the lab's per-scan zaps of pinned and unpinned 4K RAM."""

    def v(policy: str, counter: str) -> int:
        return results[policy][f"vfio-pinned:{counter}"]

    zero = [p for p in ("rfc-v2", "notify-changed") if v(p, "remote_tlb_flushes") == 0]
    failed_618, failed_71 = (
        v("linux-6.18", "numa_migrate_failed"),
        v("linux-7.1", "numa_migrate_failed"),
    )
    zaps_618, zaps_71 = v("linux-6.18", "spte_zapped"), v("linux-7.1", "spte_zapped")
    fl_618, fl_71 = v("linux-6.18", "remote_tlb_flushes"), v("linux-7.1", "remote_tlb_flushes")
    who = " and the new `notify-changed`" if len(zero) == 2 else ""
    lines = ["- **Pinned VM (the RFC's case).**"]
    if "rfc-v2" in zero:
        lines[0] += (
            f" rfc-v2{who} take{'s' if not who else ''} NUMA balancing's KVM shootdowns to"
            ' zero, as Yan Zhao measured ("9000+ on average to 0").'
        )
    fails = "none" if failed_71 == 0 else _n(failed_71)
    lines[0] += (
        f" Upstream's fix (v6.19+, `linux-7.1`) stops the doomed migrations: {_n(failed_618)}"
        f" pages failed on 6.18 and {fails} fail on 7.1."
    )
    if zaps_71 > zaps_618 and fl_71 > fl_618:
        lines[0] += (
            f" But it zaps **{_ratio(zaps_71, zaps_618)} more SPTEs** than 6.18"
            f" ({_n(zaps_71)} against {_n(zaps_618)}) and flushes {_n(fl_71)} times against"
            f" {_n(fl_618)}. Two things cause this:"
        )
        lines += [
            "  - A chunk of pinned memory changes no PTE, so it does not use up the 256 MB scan",
            "    budget (KERNEL.md §3.4). One scan then walks up to 8 chunks, and each chunk",
            "    still sends its notifier.",
            "  - Without failed migrations, the scan period never backs off.",
            "",
        ]
    else:
        lines[0] += (
            f" It zaps {_n(zaps_71)} SPTEs against 6.18's {_n(zaps_618)} and flushes"
            f" {_n(fl_71)} times against {_n(fl_618)}."
        )
        lines.append("")
    lines += _lab_per_scan(cells, results)
    return lines


def _lab_per_scan(cells: Cells, results: Results) -> list[str]:
    """The lab's observed SPTE zaps per scan of pinned and unpinned private 4K RAM."""
    pinned, unpinned = cells.get("anon 4K pinned"), cells.get("anon 4K")
    sp_65 = results["skip-pinned"]["vfio-pinned:remote_tlb_flushes"]
    fl_65 = results["linux-6.5"]["vfio-pinned:remote_tlb_flushes"]
    tail = (
        f"David Hildenbrand's skip-pinned on 6.5 has the same problem: {_n(sp_65)} flushes"
        f" against 6.5's {_n(fl_65)}."
        if sp_65 > fl_65
        else f"David Hildenbrand's skip-pinned on 6.5 flushes {_n(sp_65)} times against"
        f" 6.5's {_n(fl_65)}."
    )
    if pinned is None or unpinned is None or not pinned["scans"][0] or not unpinned["scans"][0]:
        return [f"  {tail}"]
    pz = pinned["spte_zapped"][0] / pinned["scans"][0]
    pn = pinned["notifier_calls"][0] / pinned["scans"][0]
    uz = unpinned["spte_zapped"][0] / unpinned["scans"][0]
    return [
        f"  The lab saw it on the real 6.18 host. A scan of pinned private 4K RAM zaps"
        f" {_n(pz / PAGES_4K_PER_MIB)} MiB of it ({_n(pz)} SPTEs, {pn:.1f} notifiers). A scan"
        f" of unpinned RAM zaps {_n(uz / PAGES_4K_PER_MIB)} MiB"
        + (", because the PTEs it changes use up the budget." if uz < pz else ".")
        + f" {tail}",
    ]


def unpinned_vm(results: Results) -> list[str]:
    """`no-device`: rfc-v2's unmap calls and flushes against 6.5, beside Yan Zhao's."""

    def v(policy: str, counter: str) -> int:
        return results[policy][f"no-device:{counter}"]

    u65, urfc = (
        v("linux-6.5", "kvm_unmap_gfn_range_calls"),
        v("rfc-v2", "kvm_unmap_gfn_range_calls"),
    )
    f65, frfc = v("linux-6.5", "remote_tlb_flushes"), v("rfc-v2", "remote_tlb_flushes")
    many = f"{_ratio(urfc, u65)} more" if urfc > u65 else _more(urfc, u65)
    lines = [
        f"- **Unpinned VM.** rfc-v2 makes {many} unmap calls ({_n(u65)} to {_n(urfc)})"
        + (", the direction of Yan's 35 to 10,037." if urfc > u65 else "; Yan saw 35 to 10,037.")
        + f" It also makes {_more(frfc, f65)} flushes than 6.5 ({_n(frfc)} against {_n(f65)}),"
        " where Yan measured fewer (8,625 to 4,610)."
    ]
    if frfc > f65:
        lines += [
            "  This sample maps every THP with one 2M SPTE, and such short zaps are rarely caught",
            "  by a faulting vCPU (ADR 0370), so 6.5 flushes about as little as 6.18.",
            "  `traces/rfc-boot.toml` has the 4K SPTEs of a real boot and reproduces her direction",
            "  (below).",
        ]
    return lines


def mixed_host(results: Results) -> list[str]:
    """`mixed`: notify-changed against linux-7.1 and rfc-v2; the oracle's floor."""

    def v(policy: str) -> int:
        return results[policy]["mixed:remote_tlb_flushes"]

    nc, l71, rfc, orc = v("notify-changed"), v("linux-7.1"), v("rfc-v2"), v("oracle")
    lines = [
        f"- **Mixed host.** `notify-changed` needs {_n(nc)} KVM flushes against {_n(l71)} on"
        f" linux-7.1 ({_pct(l71, nc):+.0f}%) and {_n(rfc)} on rfc-v2."
    ]
    if nc < l71 and nc < rfc:
        lines += [
            "  It keeps the per-chunk batching that rfc-v2's per-page callback loses, which was",
            "  Sean Christopherson's objection.",
        ]
    lines += [
        f"  The oracle ({_n(orc)}) is the floor. It migrates fewer pages (it protects only pages",
        "  a remote vCPU touched in the last epoch), so it is a bound on shootdowns per scanned",
        "  chunk, not a schedule to copy (ADR 0302).",
    ]
    return lines


def results_findings(results: Results, cells: Cells) -> list[str]:
    """The ``findings`` block: what the results table says, spec by spec."""
    return wrap(
        [
            "What the table says:",
            "",
            *pinned_vm(results, cells),
            *unpinned_vm(results),
            *mixed_host(results),
        ]
    )


def _within(pairs: list[tuple[float, float]], bound_pct: float) -> bool:
    return all((o == s) or (o > 0 and abs(_pct(o, s)) <= bound_pct + 1e-9) for o, s in pairs)


#: Counters named in the "Within 10%" sentence, in its order, with their words.
WITHIN_WORDS = (
    ("notifier_calls", "notifier calls"),
    ("notifier_bytes", "notifier bytes"),
    ("spte_zapped", "SPTE zaps"),
    ("refaults", "refaults (including the shadow MMU's 8-SPTE prefetch)"),
    ("scans", "scans"),
    ("numa_huge_pte_updates", "huge PMD updates"),
    ("numa_hint_faults", "hinting faults"),
)


def calibration_findings(cells: Cells) -> list[str]:
    """The ``calibration-findings`` block: which counters are within 10% in every cell, the
    scan interval, the PTE updates the engine does not count, and the KVM flushes per cell
    and pooled."""
    names = list(cells)
    lines: list[str] = []
    pte = [
        (c["numa_pte_updates"][0], c["numa_pte_updates"][1])
        for n, c in cells.items()
        if n != "anon 4K pinned" and c["numa_pte_updates"][0] > 0
    ]
    if pte:
        errs = [_pct(o, s) for o, s in pte]
        scans = [c["scans"][0] for n, c in cells.items() if n != "anon 4K pinned"]
        own = sum(o - s for o, s in pte) / max(sum(scans), 1)
        side = "below" if max(errs) < 0 else "above" if min(errs) > 0 else "off"
        lo, hi = sorted((abs(min(errs)), abs(max(errs))))
        spread = f"{lo:.1f}%" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}% to {hi:.1f}%"
        lines += [
            f"numa_pte_updates are {spread} {side} in every cell but pinned anon 4K: the VMM's own",
            f"~{_n(own)} PTEs per scan, which the engine does not count.",
            "",
        ]
    within = [
        words
        for key, words in WITHIN_WORDS
        if _within(
            [
                cells[n][key]
                for n in names
                if not math.isnan(cells[n][key][0])
                and not (key == "numa_hint_faults" and n == "anon 4K pinned")
            ],
            10,
        )
    ]
    outside = [words for key, words in WITHIN_WORDS if words not in within]
    iv = [(n, *cells[n]["scan_interval_ms"]) for n in names]
    iv = [(n, o, s) for n, o, s in iv if not math.isnan(o) and o > 0]
    close = sum(abs(_pct(o, s)) <= 3.5 for _, o, s in iv)
    lines.append(
        f"**Within 10% in every cell** (pinned anon 4K's hinting faults aside, below):"
        f" {', '.join(within) or 'none'}."
        f" The scan interval is within 3.5% in {close} of {len(iv)} cells."
    )
    if outside:
        lines.append(f"Not within 10% in every cell: {', '.join(outside)}.")
    lines += ["", "**Not within 10%, plainly:**", *_flush_bullet(cells), *_pinned_bullet(cells, iv)]
    return wrap(lines)


def _flush_bullet(cells: Cells) -> list[str]:
    flushes = {n: c["remote_tlb_flushes"] for n, c in cells.items()}
    errs = [_pct(o, s) for o, s in flushes.values() if o > 0]
    four_k = [v for n, v in flushes.items() if "4K" in n]
    o4, s4 = sum(o for o, _ in four_k), sum(s for _, s in four_k)
    oa, sa = sum(o for o, _ in flushes.values()), sum(s for _, s in flushes.values())
    return [
        f"- **KVM flushes, per cell ({min(errs):+.0f}% to {max(errs):+.0f}%).** Each zapping"
        " notifier costs one flush. On top of that, the 4K zap walk flushes each time it yields",
        "  to need_resched(); at ~125 preemptions/s that is about one yield per cell. That part is",
        "  a Poisson count and the engine predicts its expectation. Pooled:"
        f" {_n(o4)} / {_n(s4)} over the {_count_word(len(four_k))} 4K cells,"
        f" {_n(oa)} / {_n(sa)} over all",
        "  captures (`calibrate --markdown` prints that `all captures` row).",
    ]


def _pinned_bullet(cells: Cells, iv: list[tuple[str, float, float]]) -> list[str]:
    c = cells.get("anon 4K pinned")
    if c is None:
        return []
    err = next((_pct(o, s) for n, o, s in iv if n == "anon 4K pinned"), float("nan"))
    zero = "(0)" if c["numa_pte_updates"][1] == 0 else f"({_n(c['numa_pte_updates'][1])})"
    lines = [
        "- **Pinned anon 4K.** Its PTE updates and hinting faults are the VMM's own. The guest's",
        f"  pinned COW pages are skipped, and the engine agrees {zero}. Its scan interval is"
        f" {err:+.0f}%.",
    ]
    if not err < -10:  # the explanation below is of an interval the engine makes too short
        return lines
    return [
        *lines,
        "  After the second pass, guest RAM is reached only by the PID filter's forced retries,",
        "  one VMA per work item. Which vCPU runs those items is a coin flip at the first tick:",
        "  both vCPUs were past their threshold when numa_balancing went on. The kernel's winner",
        "  has the other vCPU's stack on its way to RAM, the engine's does not, so the engine",
        "  reaches RAM one work item earlier.",
    ]
