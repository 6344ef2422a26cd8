"""The jobs layer the command line and the notebooks' workspace share."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from store_backends import ERASURE_KEY

from features.snapshot import load_snapshot
from nbo.jobs.demo import stop_demo_service
from nbo.jobs.newsletter import COLUMNS, customer_ids, letters_table
from serving.decision_log import DecisionLog
from serving.engine import Engine, PolicySettings
from serving.store import Store


def test_customer_ids_are_distinct_stripped_and_never_blank() -> None:
    frame = pd.DataFrame({"customer_id": [" c1", "c2", None, "", "c1", "c3 "]})
    assert customer_ids(frame) == ["c1", "c2", "c3"]


def test_the_letters_table_holds_every_block_of_every_letter_in_parts(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("nbo.jobs.newsletter.AT_ONCE", 7)
    engine = Engine.load(model_dir, "1", Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY),
                         PolicySettings())
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    ids = [str(c) for c in engine.customers.names[:20]] + ["nobody-knows"]
    for customer in ids[:10]:
        engine.store.set_consents(customer, {"email": (True, True)}, "test", now)
    done: list[int] = []
    log = DecisionLog(engine.store, 90, lambda: now, flush_seconds=3600)
    table = letters_table(engine, ids, ("profile", "regional"), now, done.append, log)
    assert done == [7, 7, 7] and list(table.columns) == COLUMNS
    mailed = table.loc[table["no_mail"].isna(), "customer_id"].unique()
    assert log.flush() == len(mailed) > 0  # a decision log row per letter
    assert engine.store.decisions_of(mailed[0])[0]["endpoint"] == "batch"
    log.close()
    letters = engine.newsletter(ids, ("profile", "regional"), now)
    blocks = sum(len(letter.blocks) for letter in letters)
    assert table["block"].notna().sum() == blocks > 0
    assert set(table["customer_id"]) == set(ids)
    unmailed = table[table["no_mail"].notna()].set_index("customer_id")["no_mail"]
    assert unmailed["nobody-knows"] == "unknown customer"
    assert unmailed[ids[15]] == "no e-mail consent with double opt-in"


def test_stopping_a_demo_service_that_never_ran_says_so(tmp_path: Path) -> None:
    assert stop_demo_service(tmp_path) is False
    (tmp_path / "serve.pid").write_text("not a pid")
    assert stop_demo_service(tmp_path) is False
    assert not (tmp_path / "serve.pid").exists()
