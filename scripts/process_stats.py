"""What a running server costs the host: resident memory, open file descriptors and threads of its whole
process tree (tritonserver and every python-backend stub it started), read from /proc."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Sample:
    processes: int
    # Resident memory of the tree with shared pages counted once (the sum of each process's PSS): the
    # python backend's shared-memory regions are mapped by tritonserver and by a stub, and summing RSS
    # would count them twice.
    rss_bytes: int
    heap_bytes: int  # its anonymous part (heaps, stacks): where a leak grows
    shm_bytes: int  # its shared-memory part: the python backend's regions in /dev/shm
    open_fds: int
    threads: int


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (those still alive)."""
    found = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        listed = children.read_text().split()
    except OSError:
        return found
    for child in listed:
        found += tree(int(child))
    return found


def _fields(path: str) -> dict[str, str]:
    fields = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def sample(pid: int) -> Sample:
    """The sums over the process tree of `pid` (a process that exits meanwhile is left out)."""
    rss = heap = shm = fds = threads = alive = 0
    for member in tree(pid):
        try:
            threads_of, rollup = int(_fields(f"/proc/{member}/status")["Threads"]), _fields(f"/proc/{member}/smaps_rollup")
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
        alive += 1
        rss += _kib(rollup["Pss"])
        heap += _kib(rollup["Pss_Anon"])
        shm += _kib(rollup["Pss_Shmem"])
        threads += threads_of
    return Sample(alive, rss, heap, shm, fds, threads)
