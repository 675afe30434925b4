"""What the tests read of running processes from Linux's /proc: whether one is alive,
what it started, and which processes carry a test's marker (to check that none is left
behind)."""

from __future__ import annotations

from pathlib import Path


def stats() -> dict[int, list[str]]:
    """pid -> the fields of /proc/PID/stat after the command name (state, ppid, pgrp,
    session, ...)."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = stat[stat.rindex(")") + 2 :].split()
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def descendants(pid: int, snapshot: dict[int, list[str]] | None = None) -> list[int]:
    """Every process below ``pid`` in the process tree (from ``snapshot`` or a fresh
    :func:`stats`)."""
    tree: dict[int, list[int]] = {}
    for child, fields in (snapshot if snapshot is not None else stats()).items():
        tree.setdefault(int(fields[1]), []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def started_by(pid: int) -> list[int]:
    """``pid``'s descendants and the other members of the session it leads (orphans
    reparented away included), from one reading of /proc."""
    snapshot = stats()
    below = descendants(pid, snapshot)
    session = [p for p, f in snapshot.items() if int(f[3]) == pid and p != pid]
    return below + [p for p in session if p not in below]


def cmdline(pid: int) -> str:
    """The first 200 characters of ``pid``'s command line."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"({pid} gone)"


def marked_processes(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found
