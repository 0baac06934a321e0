"""The dependency versions this project's CPU mode and HF conversion were proven with."""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger(__name__)

# Proven together by tests/unit/test_cpu_mode.py and the HF parity tests.
PROVEN = {
    "megatron-core": "0.16.1",
    "nvidia-modelopt": "0.46.1",
    "transformers": "5.14.1",
}


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_mismatches() -> list[str]:
    """One line per dependency whose installed version differs from the proven one."""
    lines = []
    for dist, proven in PROVEN.items():
        have = installed_version(dist)
        if have != proven:
            lines.append(
                f"{dist} {have or 'not installed'} is installed but megatron_sft was proven with {proven}; "
                f"CPU mode and HF conversion may break (pip install {dist}=={proven})"
            )
    return lines


def check_versions() -> None:
    """Log a clear warning (not an error: newer releases may work) for every mismatch."""
    for line in version_mismatches():
        log.warning(line)


def apex_available() -> bool:
    """NVIDIA Apex is optional; the PyPI project named 'apex' is unrelated and not detected."""
    import importlib.util

    return importlib.util.find_spec("apex") is not None and importlib.util.find_spec("apex.normalization") is not None
