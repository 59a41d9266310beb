"""tlbreplay: how many TLB shootdowns does NUMA balancing cost a VM, under each kernel policy."""

__version__ = "0.1.0"
