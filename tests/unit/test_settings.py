"""advreid.settings: the allocator setting every stage applies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from advreid.settings import keep_freed_memory

# glibc's own accounting (mallinfo2, glibc >= 2.33) of one 100 MB tensor: the bytes served by mmap while it lives
# (hblkhd) and the free bytes the heap keeps once it is freed (fordblks). Page-fault counts would show the same thing
# less directly and drift with the kernel's load (a CI run measured 0.62 of the default's faults where an idle one
# measured 0.3-0.4).
CHURN = """
import ctypes, json, sys, torch
from advreid.settings import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.empty(25_000_000).fill_(1.0)  # 100 MB, above glibc's largest dynamic mmap threshold (32 MiB)
alive = libc.mallinfo2()
del x
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped_alive": alive.hblkhd, "kept_free": freed.fordblks}))
"""

TENSOR_BYTES = 100_000_000


def _churn(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_the_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("ADVREID_MALLOC_DEFAULTS", "1")
    assert keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_stay_in_the_heap_instead_of_going_back_to_the_kernel():
    default, keep = _churn("default"), _churn("keep")
    assert default["applied"] is False and keep["applied"] is True
    # glibc's defaults: the tensor is its own mmap, unmapped (its pages returned) when freed
    assert default["mmapped_alive"] >= TENSOR_BYTES and default["kept_free"] < TENSOR_BYTES, default
    # kept: the tensor comes from the heap and its pages stay there, free for the next tensor
    assert keep["mmapped_alive"] < TENSOR_BYTES and keep["kept_free"] >= TENSOR_BYTES, keep
