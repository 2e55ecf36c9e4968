"""The flwr 1.39 command lines: SuperLink and SuperNode argv, ``flwr`` CLI calls, the config files they read."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iotad.deploy.processes import HOST, DeployError


def format_config(values: Mapping[str, Any]) -> str:
    """Render a mapping as Flower's ``k=v k2="s"`` string (values in TOML syntax).

    Used for ``--node-config``. Flower's parser splits on whitespace outside quotes and has no
    escapes, so strings holding quotes are refused.
    """
    parts = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"bad config key {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            if '"' in value or "'" in value or "\\" in value or "\n" in value:
                raise ValueError(f"config value for {key!r} may not contain quotes, backslashes or newlines")
            text = f'"{value}"'
        else:
            raise TypeError(f"config value for {key!r} must be bool, int, float or str, not {type(value)}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"run-config values must be bool, int, float or str, not {type(value)}")


def write_run_config(path: Path, values: Mapping[str, Any]) -> Path:
    """Write run-config overrides as a flat TOML file for ``flwr run --run-config FILE.toml``."""
    if path.suffix != ".toml":
        raise ValueError("flwr only reads a run-config file whose name ends in .toml")
    lines = [f'"{key}" = {_toml_value(value)}' for key, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_flwr_config(flwr_home: Path, connection: str, address: str, root_certificates: Path) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one ``[superlink.<connection>]`` (TLS, made the default).

    ``root-certificates`` must be absolute (flwr 1.39 rejects relative paths).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f"default = {json.dumps(connection)}\n\n"
        f"[superlink.{json.dumps(connection)}]\n"
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n",
        encoding="utf-8",
    )
    return path


def flower_bin(name: str) -> str:
    """Path of a Flower console script: next to this interpreter first (venvs), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found (is flwr==1.39.0 installed?)")
    return found


def superlink_argv(
    *,
    ca_cert: Path,
    server_cert: Path,
    server_key: Path,
    database: Path | str,
    fleet_address: str,
    control_port: int,
    control_host: str = HOST,
    supernode_auth: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """``flower-superlink`` with TLS, node authentication and a persistent state database.

    The Control/ServerAppIo HTTPS API stays on ``control_host`` (loopback by default): it can start
    code on every device and must never be published.
    """
    argv = [
        flower_bin("flower-superlink"),
        "--ssl-ca-certfile", str(ca_cert),
        "--ssl-certfile", str(server_cert),
        "--ssl-keyfile", str(server_key),
        "--database", str(database),
        "--fleet-api-address", fleet_address,
        "--host", control_host,
        "--port", str(control_port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if supernode_auth:
        argv.append("--enable-supernode-auth")
    return argv + list(extra)


def supernode_argv(
    *,
    superlink: str,
    root_certificates: Path | None,
    private_key: Path | None,
    port: int,
    node_config: Mapping[str, Any] | None = None,
    host: str = HOST,
    insecure: bool = False,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``flower-supernode`` (grpc-rere, TLS unless ``insecure``) with its own local Runtime API port."""
    argv = [flower_bin("flower-supernode"), "--superlink", superlink]
    if insecure:
        argv.append("--insecure")
    elif root_certificates is not None:
        argv += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        argv += ["--auth-supernode-private-key", str(private_key)]
    if node_config:
        argv += ["--node-config", format_config(node_config)]
    argv += ["--host", host, "--port", str(port)]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    return argv + list(extra)


def flwr_cli(
    args: Sequence[str], *, flwr_home: Path, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` against ``$FLWR_HOME/config.toml``; never raises on a non-zero exit."""
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    return subprocess.run(
        [flower_bin("flwr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _json_out(proc: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    text = proc.stdout
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if proc.returncode != 0 or not isinstance(data, dict) or not data.get("success", False):
        msg = (proc.stderr.strip() or proc.stdout.strip())[-800:]
        raise DeployError(f"{what} failed (exit {proc.returncode}): {msg}")
    return data


def register_node(
    flwr_home: Path, connection: str, public_key: Path, name: str | None = None, timeout: float = 60.0
) -> int:
    """``flwr supernode register <public_key> <connection> [--name NAME]``; returns the node id.

    The node id is assigned at registration and survives SuperLink restarts (``--database``).
    """
    args = ["supernode", "register", str(public_key), connection, "--format", "json"]
    if name:
        args += ["--name", name]
    data = _json_out(flwr_cli(args, flwr_home=flwr_home, timeout=timeout), f"register {public_key}")
    return int(data["node-id"])


def list_nodes(flwr_home: Path, connection: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """``flwr supernode list --format json``: dicts with ``node-id`` (str) and ``status``
    (registered | online | offline | unregistered)."""
    proc = flwr_cli(["supernode", "list", connection, "--format", "json"], flwr_home=flwr_home, timeout=timeout)
    return list(_json_out(proc, "flwr supernode list")["nodes"])


def list_runs(
    flwr_home: Path, connection: str, run_id: int | None = None, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """``flwr ls --format json``: dicts with ``run-id`` (str), ``status`` (pending | starting | running |
    finished:completed | finished:failed | finished:stopped), ``status-details``, timestamps."""
    args = ["ls", connection, "--format", "json"]
    if run_id is not None:
        args += ["--run-id", str(run_id)]
    return list(_json_out(flwr_cli(args, flwr_home=flwr_home, timeout=timeout), "flwr ls")["runs"])


def stop_run(flwr_home: Path, connection: str, run_id: int, timeout: float = 60.0) -> bool:
    """``flwr stop <run_id>``; True if the SuperLink accepted it."""
    proc = flwr_cli(["stop", str(run_id), connection], flwr_home=flwr_home, timeout=timeout)
    return proc.returncode == 0


def _orphaned_superexec(argv: list[bytes]) -> bool:
    """A ``flower-superexec`` whose ``--parent-pid`` process no longer exists."""
    if not any(a.endswith(b"flower-superexec") for a in argv[:2]) or b"--parent-pid" not in argv:
        return False
    try:
        parent = int(argv[argv.index(b"--parent-pid") + 1])
    except (IndexError, ValueError):
        return False
    return not Path(f"/proc/{parent}").exists()
