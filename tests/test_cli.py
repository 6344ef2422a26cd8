"""The nbo command line: every command runs, helps, and exits with a meaningful code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from free_ports import free_port
from typer.testing import CliRunner

from nbo.cli import EXIT_DATA, EXIT_MISSING, EXIT_NOT_PROMOTED, app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["generate"], ["import", "online-retail"],
                                     ["data", "validate"], ["features", "build"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_names_every_model_and_params_lists_each_setting() -> None:
    from nbo.cli.training import MODEL_KINDS
    from training.models import MODELS

    assert tuple(MODELS) == MODEL_KINDS
    helped = " ".join(runner.invoke(app, ["train", "--help"]).output.split())
    assert all(kind in helped for kind in MODELS), helped
    for kind, model in MODELS.items():
        shown = runner.invoke(app, ["models", "params", kind])
        assert shown.exit_code == 0, shown.output
        for name in model().params():
            assert name in shown.output, (kind, name)
    ease = " ".join(runner.invoke(app, ["models", "params", "ease"]).output.split())
    assert "l2 │ 500.0 │ 1 to 10000 (log scale)" in ease
    assert runner.invoke(app, ["models", "params", "gossip"]).exit_code == 2


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


@pytest.mark.parametrize("broken", ["header only", "every row bad"])
def test_no_valid_events_is_bad_data_not_a_crash(tmp_path: Path, broken: str) -> None:
    shop = tmp_path / "shop"
    runner.invoke(app, ["generate", str(shop), "--customers", "30"])
    events = pd.read_parquet(shop / "events.parquet")
    if broken == "header only":
        events = events.iloc[:0]
    else:
        events["product_id"] = "not in the catalogue"
    events.to_parquet(shop / "events.parquet")
    validated = runner.invoke(app, ["data", "validate", str(shop)])
    assert validated.exit_code == EXIT_DATA, validated.output
    assert "no valid events" in validated.output
    built = runner.invoke(app, ["features", "build", str(shop), str(tmp_path / "snap")])
    assert built.exit_code == EXIT_DATA, built.output
    assert "no valid events" in built.output and "Traceback" not in built.output
    if broken == "every row bad":
        assert f"unknown product: {len(events):,}" in " ".join(built.output.split())


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


@pytest.mark.slow
def test_demo_runs_end_to_end(isolated_home: Path) -> None:
    port = free_port()
    try:
        result = runner.invoke(app, ["demo", "--customers", "150", "--port", str(port)])
        assert result.exit_code == 0, result.output
        assert "lifecycle stages" in result.output and "Segments" in result.output
        assert "POST /rank for" in result.output and f"127.0.0.1:{port}/newsletter" in result.output
        # the lapsed customer's ranking under the demo's policy, with its components
        assert "with the offer policy example-1" in result.output
        assert "context_weight" in result.output and '"explain": true' in result.output
        assert (isolated_home / "demo" / "snapshot" / "manifest.json").exists()
        assert (isolated_home / "demo" / "mlflow.db").exists()  # the demo's own workspace
        assert not (isolated_home / "mlflow.db").exists()
    finally:
        stopped = runner.invoke(app, ["demo", "--stop"])
    assert "stopped the demo service" in stopped.output
    # another shop in the same workspace: its gate refuses to compare across splits, and the
    # demo says so instead of serving the old champion
    again = runner.invoke(app, ["demo", "--customers", "150", "--seed", "7", "--port",
                                str(port)])
    assert again.exit_code == EXIT_NOT_PROMOTED, again.output
    assert "kept its champion" in again.output and "POST /rank" not in again.output


def test_tune_searches_on_three_windows_before_the_split_by_default(snapshot_dir: Path) -> None:
    import optuna

    from features.settings import Settings

    result = runner.invoke(app, ["tune", "popularity", "--trials", "2",
                                 "--snapshot", str(snapshot_dir)])
    assert result.exit_code == 0, result.output
    assert "as challenger" in result.output
    studies = optuna.get_all_study_names(Settings().optuna_url())
    assert len(studies) == 1 and studies[0].endswith("-folds3")


def test_tune_on_more_windows_than_the_data_holds_exits_3(snapshot_dir: Path) -> None:
    result = runner.invoke(app, ["tune", "popularity", "--trials", "1", "--folds", "40",
                                 "--snapshot", str(snapshot_dir)])
    assert result.exit_code == EXIT_DATA
    assert "cannot make 40 validation window(s)" in result.output


def test_newsletter_writes_every_customers_blocks_or_why_not(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from features.snapshot import load_snapshot
    from serving.models import import_model

    snapshot = load_snapshot(snapshot_dir)
    monkeypatch.setenv("NBO_NOW", snapshot.now.isoformat())
    monkeypatch.setenv("NBO_CONSENT_DB_URL", f"sqlite:///{tmp_path / 'consent.db'}")
    result = runner.invoke(app, ["newsletter", str(tmp_path / "missing.csv"),
                                 str(tmp_path / "out.csv")])
    assert result.exit_code == EXIT_MISSING
    known = snapshot.features.customer_state["customer_id"].head(150).tolist()
    people = tmp_path / "customers.csv"
    pd.DataFrame({"customer_id": [*known, "nobody-we-know", known[0]]}).to_csv(people,
                                                                                index=False)
    result = runner.invoke(app, ["newsletter", str(people), str(tmp_path / "out.csv"),
                                 "--blocks", "profile,gossip"])
    assert result.exit_code == 2 and "gossip" in result.output

    import_model(model_dir, "5")  # the newest entry of the store is what the job uses
    out = tmp_path / "mail" / "blocks.parquet"
    result = runner.invoke(app, ["newsletter", str(people), str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert set(table["customer_id"]) == {*known, "nobody-we-know"}
    assert table.loc[table["customer_id"] == "nobody-we-know", "no_mail"].tolist() == [
        "unknown customer"]
    mailed = table[table["no_mail"].isna()]
    assert len(mailed) and mailed["reason"].notna().all()
    assert not mailed.duplicated(["customer_id", "product_id"]).any()
    assert not mailed.duplicated(["customer_id", "block"]).any()
    unmailed = table[table["no_mail"].notna()]
    assert unmailed["product_id"].isna().all()
    assert f"{mailed['customer_id'].nunique():,} of {len(known) + 1:,} customers" in \
        result.output
    assert "model version 5" in result.output


def test_build_without_a_promoted_model_says_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("NBO_MODEL_TAG", "nbo-ranker-never-imported:latest")
    result = runner.invoke(app, ["build"])
    assert result.exit_code == 2
    assert "run 'nbo promote' first" in " ".join(result.output.split())


def test_policy_validate_and_show(tmp_path: Path, snapshot_dir: Path) -> None:
    from nbo.cli import EXIT_POLICY

    example = Path(__file__).parents[1] / "nbo" / "jobs" / "demo_policy.yaml"
    valid = runner.invoke(app, ["policy", "validate", str(example), "--snapshot",
                                str(snapshot_dir)])
    assert valid.exit_code == 0 and "valid, version example-1" in valid.output, valid.output
    shown = runner.invoke(app, ["policy", "show", str(example)])
    assert shown.exit_code == 0 and "winback15:" in shown.output
    assert "default_value: 1.0" in shown.output  # every setting, defaults included
    bad = tmp_path / "policy.yaml"
    bad.write_text("offers:\n  p00001:\n    weight: -1\n")
    refused = runner.invoke(app, ["policy", "validate", str(bad)])
    assert refused.exit_code == EXIT_POLICY and "offers.p00001.weight (line 3)" in " ".join(
        refused.output.split())
    bad.write_text("offers:\n  not-an-offer: {weight: 2}\n")
    assert runner.invoke(app, ["policy", "validate", str(bad)]).exit_code == 0  # schema only
    against = runner.invoke(app, ["policy", "validate", str(bad), "--snapshot",
                                  str(snapshot_dir)])
    assert against.exit_code == EXIT_POLICY and "not-an-offer" in against.output
    assert runner.invoke(app, ["policy", "validate", str(tmp_path / "none.yaml")]
                         ).exit_code == EXIT_MISSING
    stored = runner.invoke(app, ["policy", "show"])
    assert stored.exit_code == 0 and "relevance alone" in stored.output, stored.output
