"""adamix.allocator: after tuning, a forward's varying activation sizes reuse freed memory (no page faults)."""
import os
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc only")

# Allocate and free buffers of 1 to 30 MiB in a varying order, as a forward's activations of different batch
# shapes do; report the minor page faults of the second pass (the first one grows the heap).
SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch
    from adamix import allocator
    print(allocator.tune())
    sizes = [(s * 7919) % 30 + 1 for s in range(40)]
    for attempt in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for mib in sizes:
            t = torch.ones(mib << 18)  # mib MiB of float32, every page touched
            del t
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def run(env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.split()


@glibc
def test_tuned_process_reuses_freed_memory():
    tuned, first, second = run({"ADAMIX_MALLOC_TUNING": "1"})
    assert tuned == "True"
    assert int(second) < 200  # 40 buffers of up to 30 MiB: ~150,000 faults if each came from fresh pages
    untuned, first_untuned, _ = run({"ADAMIX_MALLOC_TUNING": "0"})  # the opt-out leaves glibc's defaults
    assert untuned == "False"
    # glibc's defaults mmap each large block until its dynamic threshold catches up, and fault it in afresh
    assert int(first) < 0.6 * int(first_untuned)
