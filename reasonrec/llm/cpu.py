"""What the CPU can do, read once: the feature flags the llama.cpp backend and its tests decide on.

Only one decision depends on them today: llama.cpp's AMX kernels (Intel Sapphire Rapids and later) segfault on
the bundled Q4_1 and Q8_0 weights with llama-cpp-python 0.3.36 (issue 12), so the backend keeps llama.cpp's
extra buffer types off where AMX is present (:func:`reasonrec.llm.llamacpp.use_extra_buffers`). The tests skip
the crash reproduction with this same answer, so a test and the backend never disagree about a machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

# The flags Linux reports for AMX (arch/x86/include/asm/cpufeatures.h); llama.cpp's AMX buffer type needs
# AMX-INT8 (ggml/src/ggml-cpu/amx/amx.cpp, compiled under __AMX_INT8__ && __AVX512VNNI__).
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})


@functools.cache
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first processor in ``cpuinfo`` (Linux); empty where the file does not exist."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # macOS, Windows: no /proc; no x86 AMX there that llama.cpp would use by default
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says "flags", ARM "Features"
            return frozenset(value.split())
    return frozenset()


def has_amx(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU reports any AMX feature (``flags`` defaults to :func:`cpu_flags`)."""
    return bool(AMX_FLAGS & (cpu_flags() if flags is None else flags))
