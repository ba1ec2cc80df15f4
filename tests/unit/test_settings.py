"""advreid.settings: the allocator setting every stage applies."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from advreid.settings import keep_freed_memory

CHURN = """
import resource, sys, torch
from advreid.settings import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[2])):
    x = torch.empty(25_000_000).fill_(1.0)  # 100 MB, above glibc's largest dynamic mmap threshold (32 MiB)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("ADVREID_MALLOC_DEFAULTS", "1")
    assert keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    """The page faults each further 100 MB tensor costs: all its pages by default (a fresh mmap each time), far fewer
    once freed memory stays in the heap (measured: ~0.3-0.4 of them with glibc 2.36)."""
    pages = 100_000_000 // resource.getpagesize()
    per_tensor = {}
    for mode in ("default", "keep"):
        counts = []
        for repeats in (4, 12):
            out = subprocess.run([sys.executable, "-c", CHURN, mode, str(repeats)], capture_output=True, text=True,
                                 check=True).stdout  # fmt: skip
            applied, count = out.split()
            assert applied == str(mode == "keep")
            counts.append(int(count))
        per_tensor[mode] = (counts[1] - counts[0]) / 8
    assert per_tensor["default"] >= 0.9 * pages, per_tensor
    assert per_tensor["keep"] <= 0.6 * per_tensor["default"], per_tensor
