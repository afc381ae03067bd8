"""One-line descriptions of OSError for the command lines (disk full, permissions, ...)."""

from __future__ import annotations


def describe_os_error(exc: OSError) -> str:
    """The file and the system's reason. numpy's ``tofile`` reports a short write without errno: a full disk."""
    if exc.errno is None and "requested and" in str(exc):
        return f"write failed, disk full? ({exc})"
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
