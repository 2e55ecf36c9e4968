"""Samples a process tree from /proc: which long-lived processes run, their RSS and open file descriptors,
and the zombies among their children (Linux only; for the soak test)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Role of a process by what its command line contains (first match wins).
ROLES = (
    ("flower-superlink", "superlink"),
    ("flower-supernode", "supernode"),
    ("flower-superexec", "superexec"),
    ("flwr-serverapp", "serverapp"),
    ("flwr-clientapp", "clientapp"),
    (" agent ", "agent"),
    ("local-federation", "launcher"),
)
#: Roles that live as long as the federation: their count, RSS and descriptors must stay flat.
LONG_LIVED = ("launcher", "superlink", "supernode", "superexec", "serverapp", "agent")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    role: str
    state: str
    rss_kib: int
    fds: int


@dataclass
class Sample:
    round: int
    procs: list[Proc] = field(default_factory=list)
    #: Children in state Z (exited, not yet waited for) of each sampled process that has any.
    zombies_by_parent: dict[int, int] = field(default_factory=dict)

    @property
    def zombies(self) -> int:
        return sum(self.zombies_by_parent.values())

    def long_lived(self) -> dict[int, Proc]:
        return {p.pid: p for p in self.procs if p.role in LONG_LIVED}

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.role for p in self.procs if p.role in LONG_LIVED))

    def summary(self) -> dict[str, object]:
        by_role: dict[str, dict[str, int]] = {}
        for p in self.long_lived().values():
            r = by_role.setdefault(p.role, {"processes": 0, "rss_mib_max": 0, "fds_max": 0})
            r["processes"] += 1
            r["rss_mib_max"] = max(r["rss_mib_max"], round(p.rss_kib / 1024))
            r["fds_max"] = max(r["fds_max"], p.fds)
        return {"round": self.round, "processes": len(self.procs), "zombies": self.zombies, "roles": by_role}


def _role(cmdline: bytes) -> str:
    text = " " + cmdline.replace(b"\0", b" ").decode(errors="replace") + " "
    return next((role for needle, role in ROLES if needle in text), "other")


def _read(pid: int) -> Proc | None:
    base = Path(f"/proc/{pid}")
    try:
        stat = (base / "stat").read_text().rsplit(")", 1)[1].split()
        cmdline = (base / "cmdline").read_bytes()
        status = (base / "status").read_text()
        fds = len(os.listdir(base / "fd")) if stat[0] != "Z" else 0
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return Proc(pid, int(stat[1]), _role(cmdline), stat[0], rss, fds)


def sample(pids: list[int], server_round: int) -> Sample:
    """The given processes, plus the zombie children of any of them."""
    procs = [p for p in map(_read, pids) if p is not None]
    parents = {p.pid for p in procs}
    zombies: Counter[int] = Counter()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            p = _read(int(entry.name))
            if p is not None and p.state == "Z" and p.ppid in parents:
                zombies[p.ppid] += 1
    return Sample(server_round, procs, dict(zombies))
