"""How many CPUs this process may use."""

import os


def available_cpus() -> int:
    """The CPUs this process may run on (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
