"""The nbo command line: every command runs, helps, and exits with a meaningful code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from nbo.cli import EXIT_DATA, EXIT_MISSING, app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["generate"], ["import", "online-retail"],
                                     ["data", "validate"], ["features", "build"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_generate_validate_build(tmp_path: Path) -> None:
    shop, snap = tmp_path / "shop", tmp_path / "snap"
    result = runner.invoke(app, ["generate", str(shop), "--customers", "80", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "80 customers" in result.output
    result = runner.invoke(app, ["data", "validate", str(shop)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    result = runner.invoke(app, ["features", "build", str(shop), str(snap),
                                 "--set", "lifecycle.new_days=10"])
    assert result.exit_code == 0, result.output
    assert (snap / "manifest.json").exists()
    assert '"lifecycle.new_days": 10' in (snap / "manifest.json").read_text()


def test_bad_data_exits_3_and_names_the_file(tmp_path: Path) -> None:
    runner.invoke(app, ["generate", str(tmp_path), "--customers", "50"])
    events = pd.read_parquet(tmp_path / "events.parquet")
    events["event_type"] = "teleport"
    events.to_parquet(tmp_path / "events.parquet")
    result = runner.invoke(app, ["data", "validate", str(tmp_path)])
    assert result.exit_code == EXIT_DATA
    assert "events.parquet" in result.output and "unknown event_type" in result.output
    assert (tmp_path / "quarantine" / "events.csv").exists()


def test_missing_input_exits_4(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nowhere")])
    assert result.exit_code == EXIT_MISSING
    result = runner.invoke(app, ["import", "online-retail", str(tmp_path / "x.csv"),
                                 str(tmp_path / "out")])
    assert result.exit_code == EXIT_MISSING


def test_unknown_setting_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["features", "build", str(tmp_path), str(tmp_path / "s"),
                                 "--set", "weights.colour=blue"])
    assert result.exit_code == 2


def test_demo_runs_end_to_end(isolated_home: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        result = runner.invoke(app, ["demo", "--customers", "150", "--port", str(port)])
        assert result.exit_code == 0, result.output
        assert "lifecycle stages" in result.output and "Segments" in result.output
        assert "POST /rank for" in result.output and f"127.0.0.1:{port}/newsletter" in result.output
        assert (isolated_home / "demo" / "snapshot" / "manifest.json").exists()
    finally:
        stopped = runner.invoke(app, ["demo", "--stop"])
    assert "stopped the demo service" in stopped.output
