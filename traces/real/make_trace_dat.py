"""How traces/real/lab-anon-4k-16m.dat was made (Linux 6.18.44-fc-v657, kvm_pvm, trace-cmd 3.1.6).
The lab guest (16 MiB anon 4K, 2 vCPUs) runs 3 s under numa_balancing=1 with the events below enabled through tracefs; `trace-cmd record` is refused in this sandbox (it cannot write ftrace_enabled), so `trace-cmd extract` writes the trace.dat. Restores numa_balancing and tracing. Run as root from the repo: .venv/bin/python traces/real/make_trace_dat.py OUT.dat"""
import os, subprocess, time, sys
from pathlib import Path
from pipeline.lab.guest import Guest
T = Path("/sys/kernel/tracing")
EV = ["kvm/kvm_unmap_hva_range", "kvmmmu/kvm_mmu_spte_requested", "kvmmmu/kvm_mmu_set_spte",
      "tlb/tlb_flush", "sched/sched_skip_vma_numa", "kvmmmu/kvm_mmu_prepare_zap_page"]
def w(p, v): (T / p).write_text(v)
nb = Path("/proc/sys/kernel/numa_balancing")
old_nb = nb.read_text().strip()
old_kb = (T / "buffer_size_kb").read_text().split()[-1].strip("()").split(":")[-1].strip()
g = Guest(16 << 20, 2, "anon", False, "split")
try:
    tids = g.start()
    time.sleep(1.5)
    w("buffer_size_kb", "4096"); w("trace", "")
    pid = os.getpid()
    w("set_event_pid", " ".join(map(str, [pid, *tids])))
    for e in EV: w(f"events/{e}/enable", "1")
    w("tracing_on", "1")
    nb.write_text("1")
    time.sleep(3)
finally:
    nb.write_text(old_nb)
    w("tracing_on", "0")
    for e in EV: w(f"events/{e}/enable", "0")
    w("set_event_pid", "")
    w("buffer_size_kb", old_kb)
    g.stop(); g.close()
subprocess.run(["trace-cmd", "extract", "-o", sys.argv[1]], check=True, capture_output=True)
w("trace", "")
print("tids", tids)
