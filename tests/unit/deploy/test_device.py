"""The device launcher (``iotad device``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_device_launcher_imports_neither_pandas_nor_torch(tmp_path: Path) -> None:
    """``iotad device`` stays up for the device's lifetime: it must not carry the data or ML stacks."""
    code = (
        "import sys\nfrom iotad import cli\n"
        "try:\n"
        f"    cli.main(['device', '--state-dir', {str(tmp_path)!r}, '--device-name', 'd', '--superlink',"
        " '127.0.0.1:1', '--root-certificates', '/nonexistent/ca.crt', '--private-key', '/nonexistent/key',"
        " '--data-path', '/nonexistent'])\n"
        "except SystemExit as e:\n    assert e.code == 2, e.code\n"
        "assert 'pandas' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _agent_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *extra: str) -> list[str]:
    """The agent command line ``iotad device ... extra`` would start."""
    from iotad import cli
    from iotad.deploy import device

    seen: list[list[str]] = []
    monkeypatch.setattr(device, "run_device", lambda opts: seen.append(device.DeviceLauncher(opts).agent_argv()) or 0)
    cli.main(["device", "--state-dir", str(tmp_path), "--device-name", "device-1", "--superlink", "127.0.0.1:1",
              "--root-certificates", "ca.crt", "--private-key", "key", "--data-path", str(tmp_path / "traffic.csv"),
              *extra])
    return seen[0]


def test_the_replay_is_the_data_unless_a_replay_path_or_source_is_given(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    def replayed(*extra: str) -> str | None:
        argv = _agent_argv(monkeypatch, tmp_path, *extra)
        assert argv.count("--replay") <= 1 and sum(a in argv for a in ("--replay", "--tail", "--capture")) == 1
        return argv[argv.index("--replay") + 1] if "--replay" in argv else None

    assert replayed() == str(tmp_path / "traffic.csv")
    assert replayed("--replay-path", str(tmp_path / "story.csv")) == str(tmp_path / "story.csv")
    assert replayed("--replay-path", "story.csv", "--agent-args", "--capture eth0") is None
    assert replayed("--replay-path", "story.csv", "--tail", "live.csv") is None
