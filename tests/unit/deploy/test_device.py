"""The device launcher (``iotad device``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
