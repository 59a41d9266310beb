"""The default VMM profile: the threads and VMAs of a QEMU process around a VM's guest RAM
(issue 11 item 2, ADR 0365).

Used wherever no ``capture.json`` says what the VMM process looks like: ``calibrate
--no-hosting`` (with the facts a plain trace shows, :mod:`pipeline.ingest.trace_facts`) and
``tlbreplay ingest`` of a trace without ``capture.json``. Every number and its source is in
docs/engine.md, "The default VMM profile". What counts for task_numa_work()
(kernel/sched/fair.c, v6.5 = v6.18 = v7.1, KERNEL.md §3.4) is each area's kind (its skip
rule), its size (a VMA range with PTE updates costs its whole size of the scan budget,
``pages -= (end - start) >> PAGE_SHIFT``), its Rss, and where it lies relative to guest RAM
(the scan walks the mm in address order from ``mm->numa_scan_offset``), plus
get_nr_threads() of the process.

The profile depends on the vCPU count only: QEMU's user-space overhead per GiB of guest RAM
is in the kernel (KVM's rmap and page tables), not in VMAs of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.model.hosting import VmHosting, VmmArea

KIB = 1024
MIB = 1024 * KIB
PAGE = 4 * KIB

# threads of a running QEMU besides its vCPUs (ReplayParams.vmm_threads' default): the main
# loop (system/main.c qemu_main_loop()), the call_rcu thread (util/rcu.c), KVM's NX huge
# page recovery worker (arch/x86/kvm/mmu/mmu.c: a vhost_task in the VMM's thread group since
# v6.13, ``kvm-nx-lpage-re`` in the lab's captures), one iothread (-object iothread, the
# usual virtio-blk/-scsi setup) and 4 workers of util/thread-pool.c (the block layer's
# blocking I/O; min 0, max 64 per pool, idle ones exit after 10 s: a guest with disk I/O
# keeps a few).
THREADS_BESIDES_VCPUS = 8

# the main thread's CPU share (main_thread_share, ADR 0366): QEMU's main loop sleeps in
# ppoll() between timer and I/O events (util/main-loop.c os_host_main_loop_wait()). 0.003 is
# the lab VMM's main thread in the 4 fit cells of traces/real/regimes (capture.json
# thread_sched cpu_s / seconds: 0.147 / 60.2, 0.068 / 20.9, 0.055 / 20.2, 0.068 / 20.4 =
# 0.0024-0.0033). Any share below period / window (1000 ms / 60 s = 0.017) gives the thread
# no second node_stamp crossing in a 20-60 s window: only whether it scans first matters.
MAIN_THREAD_SHARE = 0.003

# glibc's default thread stack: RLIMIT_STACK (8 MiB) plus one guard page
# (nptl/allocatestack.c); QEMU's qemu_thread_create() keeps the default size.
THREAD_STACK_BYTES = 8 * MIB
THREAD_STACK_RSS_BYTES = 64 * KIB
# glibc malloc: one arena per thread that allocates, up to 8 x CPUs (malloc/arena.c),
# each a 64 MiB (HEAP_MAX_SIZE) reservation of which the used part is rw-p, the rest ---p.
ARENA_BYTES = 64 * MIB
ARENA_USED_BYTES = 1 * MIB
# QEMU's other RAM blocks (anonymous, scanned): the firmware (pc.bios 256 KiB, pc.rom
# 128 KiB: hw/i386/pc.c, pc_sysfw.c) and the default VGA's video RAM (vga.vram 16 MiB:
# hw/display/vga.c VGA_RAM_SIZE), each mapped by qemu_ram_mmap() with a guard page.
ROM_BLOCKS = ((256 * KIB, 256 * KIB), (128 * KIB, 128 * KIB), (16 * MIB, 256 * KIB))
# the main heap ([heap], brk): GLib and QOM objects of a q35 machine, tens of MiB.
HEAP_BYTES = 24 * MIB
HEAP_RSS_BYTES = 16 * MIB
# the qemu-system-x86_64 binary (text ~ 14 MiB, data + bss ~ 2 MiB) and its shared
# libraries: ``ldd qemu-system-x86_64`` lists ~60 of a distribution build, each mapped as
# r--p, r-xp, r--p (rodata), r--p (RELRO) and rw-p (data).
BINARY_TEXT_BYTES = 14 * MIB
BINARY_DATA_BYTES = 2 * MIB
SHARED_LIBS = 60
LIB_TEXT_BYTES = 512 * KIB
LIB_DATA_BYTES = 8 * KIB
# the main thread's stack ([stack]) and the kernel's [vvar] / [vdso] (special, skipped)
MAIN_STACK_BYTES = 132 * KIB

# where the areas go (x86-64 top-down mmap layout): the binary and [heap] low
# (PIE base 0x5555_5555_4000), the mmaps made after guest RAM (thread stacks, arenas, the
# ROM blocks) just below it, the libraries (mapped at start-up, before RAM) above it.
PIE_BASE = 0x5555_5555_4000
# the provenance of the profile's facts (ADR 0511)
PROFILE_ORIGIN = "defaulted (QEMU profile, docs/engine.md)"


@dataclass(frozen=True)
class VmmProfile:
    """The default VMM process of a VM of ``vcpus`` vCPUs: its areas relative to guest RAM
    at hva ``[ram_start, ram_end)``."""

    vcpus: int

    @property
    def nr_threads(self) -> int:
        """get_nr_threads() of the QEMU process: the vCPUs plus :data:`THREADS_BESIDES_VCPUS`."""
        return self.vcpus + THREADS_BESIDES_VCPUS

    def areas(self, ram_start: int, ram_end: int) -> tuple[VmmArea, ...]:
        """The VMM's non-RAM VMAs, sorted by address (module constants, docs/engine.md)."""
        out: list[VmmArea] = []
        at = PIE_BASE
        for size, rss, kind in (
            (BINARY_TEXT_BYTES, BINARY_TEXT_BYTES // 2, "file_ro"),
            (BINARY_DATA_BYTES, BINARY_DATA_BYTES // 2, "file_rw"),
            (HEAP_BYTES, HEAP_RSS_BYTES, "anon"),
        ):
            out.append(VmmArea(at, size, rss, kind))
            at += size
        # below guest RAM, nearest first: each thread's stack (guard page, then the stack
        # holding its TLS), each allocating thread's arena, then the ROM blocks
        below: list[tuple[int, int, str, int]] = []
        for thread in range(self.nr_threads - 1):  # the main thread uses [stack]
            vcpu = thread if thread < self.vcpus else -1
            below.append((PAGE, 0, "inaccessible", -1))
            below.append((THREAD_STACK_BYTES, THREAD_STACK_RSS_BYTES, "anon", vcpu))
        for _ in range(self.nr_threads):
            below.append((ARENA_BYTES - ARENA_USED_BYTES, 0, "inaccessible", -1))
            below.append((ARENA_USED_BYTES, ARENA_USED_BYTES // 2, "anon", -1))
        for size, rss in ROM_BLOCKS:
            below.append((PAGE, 0, "inaccessible", -1))
            below.append((size, rss, "anon", -1))
        top = ram_start
        for size, rss, kind, vcpu in below:
            top -= size
            out.append(VmmArea(top, size, rss, kind, vcpu))
        at = ram_end
        for _ in range(SHARED_LIBS):
            for size, rss, kind in (
                (LIB_TEXT_BYTES, LIB_TEXT_BYTES // 2, "file_ro"),
                (LIB_DATA_BYTES, LIB_DATA_BYTES, "file_rw"),
            ):
                out.append(VmmArea(at, size, rss, kind))
                at += size
        out.append(VmmArea(at, MAIN_STACK_BYTES, MAIN_STACK_BYTES, "anon"))
        at += MAIN_STACK_BYTES
        out.append(VmmArea(at, 4 * PAGE, 4 * PAGE, "special"))  # [vvar] + [vdso]
        return tuple(sorted(out, key=lambda a: a.hva_start))


def default_hosting(vm: str, vcpus: int, ram: tuple[tuple[int, int], ...]) -> VmHosting:
    """:class:`VmHosting` of ``vm`` with the default VMM profile around its guest RAM
    (``ram``: hva ``[start, end)`` of each region; the profile sits around the lowest and
    highest). The CPU share, host load and costs stay the engine's defaults."""
    if not ram:
        return VmHosting(vm)
    profile = VmmProfile(vcpus)
    start = min(lo for lo, _ in ram)
    end = max(hi for _, hi in ram)
    return VmHosting(vm, vmm_areas=profile.areas(start, end), nr_threads=profile.nr_threads)
