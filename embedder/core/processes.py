"""Other processes, as Linux's /proc shows them: the children of a process and their command
lines (a supervisor's workers; the Ray daemons a failed start left behind). Elsewhere, none."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[tuple[int, str]]:
    """The live (not zombie) child processes of `pid`: (pid, command line), by pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, UnicodeDecodeError):  # gone meanwhile, or not ours to read
            continue
        if int(parent) == pid and state != "Z":
            found.append((int(stat.parent.name), command))
    return sorted(found)
