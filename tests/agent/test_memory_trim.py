"""The service gives the C library's freed memory back to the kernel after its first report
(memory_trim.py): freed blocks between live ones, which glibc keeps on its own, are returned."""

from __future__ import annotations

import subprocess
import sys

# Blocks of 4 KB come from the C heap (pymalloc takes only up to 512 bytes); one in sixteen
# stays alive, so glibc cannot shrink the heap from its top by itself.
FRAGMENTED = """
from clockfleet.agent.memory_trim import give_back_freed_memory
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
blocks = [bytes(4000) for _ in range(20000)]
keep = blocks[::16]
del blocks
before = rss_mb()
returned = give_back_freed_memory()
print(returned, before - rss_mb())
"""


def test_freed_heap_memory_between_live_blocks_goes_back_to_the_kernel():
    r = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    returned, dropped_mb = r.stdout.split()
    assert returned == "True"
    assert float(dropped_mb) > 40  # of about 75 MB freed
