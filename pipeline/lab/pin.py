"""Long-term pins of guest RAM, the way device pass-through pins it, through io_uring.

``IORING_REGISTER_BUFFERS`` pins every page of the registered iovecs with
``pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)`` (io_uring/rsrc.c:io_pin_pages()), the same GUP
flags VFIO uses for a DMA map, so the folios become ``folio_maybe_dma_pinned()``. The pins last
until the ring is closed. io_uring rejects one buffer above 1 GiB (io_uring/rsrc.c:
io_buffer_validate(), ``SZ_1G``), so guest RAM is registered as a list of <= 1 GiB iovecs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

SYS_IO_URING_SETUP = 425  # x86-64
SYS_IO_URING_REGISTER = 427
IORING_REGISTER_BUFFERS = 0
MAX_BUFFER_BYTES = 1 << 30
IO_URING_PARAMS_BYTES = 120  # sizeof(struct io_uring_params)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def split_iovecs(
    hva: int, size_bytes: int, max_bytes: int = MAX_BUFFER_BYTES
) -> list[tuple[int, int]]:
    """(base, length) pieces of at most ``max_bytes`` covering [hva, hva + size_bytes)."""
    return [
        (hva + off, min(max_bytes, size_bytes - off)) for off in range(0, size_bytes, max_bytes)
    ]


class LongTermPin:
    """Pins [hva, hva + size_bytes) for as long as the object is open (context manager)."""

    def __init__(self, hva: int, size_bytes: int) -> None:
        params = ctypes.create_string_buffer(IO_URING_PARAMS_BYTES)
        fd = _libc.syscall(SYS_IO_URING_SETUP, ctypes.c_uint(1), params)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
        self.fd = int(fd)
        pieces = split_iovecs(hva, size_bytes)
        iovecs = (Iovec * len(pieces))(*[Iovec(base, length) for base, length in pieces])
        ret = _libc.syscall(
            SYS_IO_URING_REGISTER,
            ctypes.c_uint(self.fd),
            ctypes.c_uint(IORING_REGISTER_BUFFERS),
            iovecs,
            ctypes.c_uint(len(pieces)),
        )
        if ret < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"io_uring_register(IORING_REGISTER_BUFFERS): {os.strerror(err)}")
        self.nr_iovecs = len(pieces)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> LongTermPin:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
