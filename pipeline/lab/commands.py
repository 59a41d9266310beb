"""CLI commands: capture, lab (run, matrix, reset)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.clikit import command

lab_app = typer.Typer(
    help="A tiny real KVM guest (no QEMU, no guest OS) run under NUMA balancing and captured.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""

    @command(app, "capture")
    def capture_cmd(  # noqa: PLR0917 - typer maps parameters to options
        pid: int = typer.Option(..., "--pid", help="the VMM process (QEMU or any KVM VMM)"),
        seconds: float = typer.Option(10.0, "--seconds", min=0.1, help="how long to trace"),
        out: Path = typer.Option(..., "--out", help="the trace, e.g. traces/NAME.trace.zst"),  # noqa: B008
        buffer_kb: int = typer.Option(16384, "--buffer-kb", min=64, help="per-CPU ring buffer"),
        vm_name: str = typer.Option("vm0", "--vm-name", help="name of the VM in the sidecar"),
        pinned: str = typer.Option("none", "--pinned", help="none | all (device pass-through)"),
        min_ram_mib: int = typer.Option(
            64, "--min-ram-mib", help="smallest VMA taken as guest RAM"
        ),
    ) -> None:
        """Trace a running KVM VMM into a compressed ftrace file + VM sidecar (needs root)."""
        from pipeline.lab import host, tracefs
        from pipeline.lab.capture import capture, detect_vm

        if pinned not in ("none", "all"):
            from pipeline.errors import InputError

            raise InputError("--pinned", f"`{pinned}` is not one of none, all")
        tracefs.require_root("tlbreplay capture")
        from pipeline.lab.capture import check_pid

        check_pid(pid)
        vm = detect_vm(
            pid, host.read_smaps(pid), name=vm_name, min_ram_mib=min_ram_mib, pinned=pinned
        )
        result = capture(pid, seconds, out, vms=[vm], buffer_kb=buffer_kb)
        lost = sum(result.lost_events.values())
        typer.echo(
            f"{result.paths.trace}: {result.lines} lines, {result.trace_bytes} bytes in "
            f"{result.seconds:.1f} s; sidecar {result.paths.sidecar}"
            + (f"; LOST {lost} events (raise --buffer-kb)" if lost else "")
            + ("; stopped early" if result.interrupted else "")
        )

    @command(lab_app, "run")
    def lab_run(  # noqa: PLR0917 - typer maps parameters to options
        mem_mib: int = typer.Option(1024, "--mem-mib", min=2, help="guest RAM (multiple of 2)"),
        vcpus: int = typer.Option(2, "--vcpus", min=1, max=64),
        backing: str = typer.Option("anon", "--backing", help="anon | shared (memfd)"),
        thp: str = typer.Option("off", "--thp", help="on | off"),
        pin: str = typer.Option("off", "--pin", help="on | off: io_uring FOLL_LONGTERM pins"),
        pattern: str = typer.Option("split", "--pattern", help="split | all | hot"),
        seconds: float = typer.Option(10.0, "--seconds", min=0.5),
        numa_balancing: int = typer.Option(1, "--numa-balancing", min=0, max=3),
        busy_loops: int = typer.Option(
            0, "--busy-loops", min=0, max=256, help="CPU-bound competitors (a loaded host)"
        ),
        out: Path = typer.Option(None, "--out", help="default: traces/real/<cell>.trace.zst"),  # noqa: B008
        mempolicy: str = typer.Option(
            "",
            "--mempolicy",
            help="default | bind | bind+numa_balancing | preferred | interleave (node 0); "
            "default: bind+numa_balancing for shared, none for anon",
        ),
        nb_from: str = typer.Option(
            "after-population",
            "--nb-from",
            help="after-population | before-guest: numa_balancing on before the guest runs, "
            "so it faults its RAM in under the scanner",
        ),
        vmm_threads: int = typer.Option(
            0, "--vmm-threads", min=0, max=512, help="VMM helper threads waking every 100 ms"
        ),
        vmm_vmas: int = typer.Option(
            -1, "--vmm-vmas", min=-1, max=4096, help="extra VMM VMAs (-1: 4 per helper thread)"
        ),
    ) -> None:
        """Run the lab guest under numa_balancing and capture it (needs root and /dev/kvm)."""
        from pipeline.lab.matrix import config_from_options
        from pipeline.lab.run import run_lab

        config = config_from_options(
            mem_mib, vcpus, backing, thp, pin, pattern, seconds, numa_balancing, busy_loops,
            mempolicy=mempolicy, nb_from=nb_from, vmm_threads=vmm_threads, vmm_vmas=vmm_vmas,
        )  # fmt: skip
        out = out or Path("traces/real") / f"{config.name}.trace.zst"
        lab = run_lab(config, out)
        typer.echo(f"{out}: passes per vCPU {lab['passes']} in {lab['window_s']} s")

    @command(lab_app, "matrix")
    def lab_matrix(
        mem_mib: int = typer.Option(512, "--mem-mib", min=2),
        vcpus: int = typer.Option(2, "--vcpus", min=1, max=64),
        seconds: float = typer.Option(8.0, "--seconds", min=0.5),
        out_dir: Path = typer.Option(Path("traces/real"), "--out-dir"),  # noqa: B008
        busy_loops: int = typer.Option(
            0, "--busy-loops", min=0, max=256, help="CPU-bound competitors (a loaded host)"
        ),
    ) -> None:
        """Run backing x THP x pin under numa_balancing=1, plus a numa_balancing=0 control."""
        from pipeline.lab.matrix import matrix_configs, run_matrix

        out_dir.mkdir(parents=True, exist_ok=True)
        configs = matrix_configs(mem_mib, vcpus, seconds, busy_loops=busy_loops)
        run_matrix(configs, out_dir, report=typer.echo)

    @command(lab_app, "sweep")
    def lab_sweep(  # noqa: PLR0917 - typer maps parameters to options
        mem_mib: str = typer.Option("256,1024,2048", "--mem-mib", help="comma list, MiB"),
        vcpus: str = typer.Option("2", "--vcpus", help="comma list, 1-4"),
        nb_from: str = typer.Option(
            "after-population", "--nb-from", help="comma list: after-population, before-guest"
        ),
        vmm_threads: str = typer.Option("0", "--vmm-threads", help="comma list"),
        seconds: str = typer.Option("20", "--seconds", help="comma list, 20-60"),
        cells: str = typer.Option(
            "anon-4k-pin,anon-thp-nopin",
            "--cells",
            help="comma list of <anon|shared>-<4k|thp>-<pin|nopin>",
        ),
        busy_loops: int = typer.Option(0, "--busy-loops", min=0, max=256),
        out_dir: Path = typer.Option(Path("traces/real/regimes"), "--out-dir"),  # noqa: B008
        plan: Path | None = typer.Option(  # noqa: B008
            None, "--plan", help="run the [[cell]]s of a plan (traces/real/regimes/SPLIT.toml)"
        ),
    ) -> None:
        """Sweep regimes: VM size x vCPUs x when numa_balancing goes on x VMM threads x window,
        each cell a fresh `lab run` (needs root and /dev/kvm)."""
        from pipeline.lab.matrix import (
            parse_cells,
            parse_list,
            plan_configs,
            regime_configs,
            run_matrix,
        )

        if plan is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            planned = [config for _, config in plan_configs(plan)]
            run_matrix(planned, out_dir, report=typer.echo, regime_names=True)
            return
        configs = regime_configs(
            mem_mib=parse_list("--mem-mib", mem_mib, int),
            vcpus=parse_list("--vcpus", vcpus, int),
            nb_from=parse_list("--nb-from", nb_from, str),
            vmm_threads=parse_list("--vmm-threads", vmm_threads, int),
            seconds=parse_list("--seconds", seconds, float),
            cells=parse_cells(cells),
            busy_loops=busy_loops,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        run_matrix(configs, out_dir, report=typer.echo, regime_names=True)

    @command(lab_app, "reset")
    def lab_reset() -> None:
        """Put the host back: numa_balancing=0, tracing off, lab events disabled and unfiltered."""
        from pipeline.lab.matrix import reset_host

        for line in reset_host():
            typer.echo(line)

    app.add_typer(lab_app, name="lab")


def main() -> None:
    """Run only these commands (``python -m pipeline.lab.commands capture ...``).

    ``lab run`` starts its capture this way, so it does not depend on other stages' modules.
    """
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, name="tlbreplay")
    register(app)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
