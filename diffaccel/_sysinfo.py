"""Machine facts for benchmark JSON, model cards and tests (one place, not one copy per script)."""
from __future__ import annotations

import platform
from typing import Optional


def _cpuinfo_field(name: str) -> Optional[str]:
    """The value of the first ``name`` line of /proc/cpuinfo, None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1]
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("AMD EPYC ..."), else what platform knows."""
    name = _cpuinfo_field("model name")
    if name is not None:
        return name.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set:
    """The CPU's feature flags from /proc/cpuinfo ("avx2", "avx512f", ...); empty where unknown."""
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags is not None else set()
