"""How many serving processes ``facerec serve`` runs (``FACEREC_WORKERS``) and each one's share of the machine."""

from __future__ import annotations

import math
import os
from pathlib import Path

from server.inference.factory import on_accelerator
from server.settings import Settings

# CPU with onnxruntime: one worker per two cores. A worker's event loop does the host work of its requests
# (decode, crops, attributes; mostly under the GIL) while its model sessions run on the other core, so each
# process keeps both of its cores busy; one worker per core would leave the models a single thread and pay a
# full copy of the process (models, interpreter, ~0.2 GB resident when idle) per core. On the 2-core reference
# box this rule gives 1 worker: the single process of before.
CPU_CORES_PER_WORKER = 2
CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, so `taskset` and container cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_quota_cores(root: Path = CGROUP_ROOT) -> int | None:
    """The container's CPU limit in whole cores (cgroup v2 ``cpu.max`` or v1 CFS quota, rounded up), None if none.

    A container limited to 2 CPUs on a 64-core node still sees 64 cores in its affinity: without this, the
    automatic worker count would start 32 (or, with Triton, 64) processes in it.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def usable_cores() -> int:
    """Cores the serving processes may keep busy: the CPU affinity, capped by a container's CPU limit."""
    quota = cpu_quota_cores()
    return min(available_cores(), quota) if quota else available_cores()


def auto_workers(settings: Settings, cores: int | None = None) -> int:
    """Worker processes when FACEREC_WORKERS is 0.

    - Triton: one per core. The models run in Triton (which batches across all workers), so a worker only does
      host work, and host work scales with processes.
    - onnxruntime on CUDA: 1. Every process would hold its own CUDA context and model copies on the GPU, and
      contexts of different processes time-slice the GPU rather than share it; ask for more explicitly.
    - onnxruntime on CPU: one per :data:`CPU_CORES_PER_WORKER` cores (at least 1).
    """
    cores = usable_cores() if cores is None else cores
    if settings.backend == "triton":
        return cores
    if on_accelerator(settings):
        return 1
    return max(1, cores // CPU_CORES_PER_WORKER)


def worker_count(settings: Settings) -> int:
    """The number of serving processes: FACEREC_WORKERS, or :func:`auto_workers` when it is 0."""
    return settings.workers or auto_workers(settings)


def group_size(settings: Settings) -> int:
    """How many workers share this machine with the calling process (1 for a single process).

    A supervisor hands each worker settings with ``workers`` set to the resolved count, so inside a worker this
    is N; in a single process ``workers`` is 0 or 1.
    """
    return max(1, settings.workers)


def worker_cores(settings: Settings) -> int | None:
    """Cores one worker's inference may use (its onnxruntime threads), or None in a single process (the backend's
    own default: every core)."""
    n = group_size(settings)
    return None if n == 1 else max(1, usable_cores() // n)


def worker_share(total: int, settings: Settings) -> int:
    """One worker's part of a node-wide ``total`` (e.g. requests in flight), so N workers add up to it."""
    return max(1, math.ceil(total / group_size(settings)))
