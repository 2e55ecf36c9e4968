"""The CLI says which install command fixes a missing optional extra (instead of Flower's exit 701)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from iotad import cli


@pytest.mark.parametrize(("argv", "module", "extra"), [
    (["simulate", "--data", "D", "--rounds", "1", "--out", "O"], "ray", "simulation"),
    (["compare", "--runs", "R", "--out", "O"], "matplotlib", "report"),
])
def test_missing_extra_names_the_install_command(argv: list[str], module: str, extra: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == module else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert f"pip install 'iotad[{extra}]'" in text, text
    assert not (tmp_path / "O").exists()  # nothing started
