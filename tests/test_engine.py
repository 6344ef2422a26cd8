"""The ranking engine without HTTP: cold customers, the newsletter's blocks, and the work a
request must not do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
from store_backends import ERASURE_KEY

from features.snapshot import load_snapshot
from serving.engine import BLOCKS, Engine, PolicySettings, Request
from serving.policy import Consent
from serving.schemas import Block
from serving.store import Store

EVERYTHING = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)


@pytest.fixture(scope="module")
def hybrid_dir(saved_model: Callable[[str, dict], Path]) -> Path:
    """A LightFM hybrid of the shop saved with its serving context."""
    return saved_model("lightfm", {"components": 16, "epochs": 15})


def engine_of(folder: Path, tmp_path: Path) -> Engine:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    return Engine.load(folder, "1", store, PolicySettings())


def test_the_hybrid_ranks_a_cold_customer_from_the_region_they_give(
        hybrid_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    engine = engine_of(hybrid_dir, tmp_path)
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    a, b = str(engine.state.regions[0]), str(engine.state.regions[1])
    prepared = {r: engine.prepare(Request("new-visitor", region=r), now, EVERYTHING)
                for r in (a, b)}
    for r in (a, b):
        assert prepared[r].fallback == "profile"
        features = pd.DataFrame({"region": [r], "age_band": ["unknown"],
                                 "lifecycle_stage": ["prospect"], "segment": [None]})
        expected = engine.model.score(["new-visitor"], customer_features=features)[0]
        assert np.allclose(prepared[r].scores, expected, atol=1e-6)
    assert not np.allclose(prepared[a].scores, prepared[b].scores)
    assert not np.allclose(prepared[a].scores, engine.model.popularity)
    ranking = engine.rank(Request("new-visitor", region=a), now, EVERYTHING)
    assert ranking.fallback == "profile" and len(ranking.offers) == 10
    assert {o.reason for o in ranking.offers} <= {"popular with customers like you",
                                                  "welcome offer"}


def test_models_without_customer_features_fall_back_to_the_region(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    engine = engine_of(model_dir, tmp_path)
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    region = str(engine.state.regions[0])
    ranking = engine.rank(Request("new-visitor", region=region), now, EVERYTHING)
    assert ranking.fallback == "popular_in_region"
    assert {o.reason for o in ranking.offers} == {"popular in your region"}
    assert engine.rank(Request("new-visitor"), now, EVERYTHING).fallback == "popular"


def test_the_regional_block_reports_the_popularity_it_was_picked_by(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    engine = engine_of(model_dir, tmp_path)
    snapshot = load_snapshot(snapshot_dir)
    known = [c for c in snapshot.consents["customer_id"].unique()
             if engine.row_of(c) >= 0 and engine.state.region[engine.row_of(c)]][:40]
    for customer in known:
        engine.store.set_consents(customer, {"email": (True, True)}, "test",
                                  snapshot.now.to_pydatetime())
    letters = engine.newsletter(known, ("profile", "regional"), snapshot.now.to_pydatetime())
    checked = 0
    for letter in letters:
        for block in letter.blocks:
            if block.block == "regional":
                region = engine.state.region[engine.row_of(letter.customer_id)]
                popularity = engine.state.regional_scores(region)
                item = engine.items.row(block.product_id)
                assert block.score == pytest.approx(popularity[item], abs=1e-6)
                checked += 1
    assert checked > 0


class NoFeedbackLog(Store):
    def exposure(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        raise AssertionError("the feedback log was read")


def test_withheld_and_anonymous_requests_do_not_read_the_feedback_log(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    store = NoFeedbackLog(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    engine = Engine.load(model_dir, "1", store, PolicySettings())
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    customer = str(engine.customers.ids[0])
    no_email = Consent(True, frozenset(), False)
    withheld = engine.rank(Request(customer, channel="email"), now, no_email)
    assert withheld.offers == [] and withheld.withheld
    product = str(engine.items.ids[0])
    assert engine.similar(product, 5, "web", now, None, None).offers
    with pytest.raises(AssertionError, match="feedback log"):
        engine.rank(Request(customer), now, EVERYTHING)


def test_the_api_offers_exactly_the_blocks_the_engine_builds() -> None:
    """The newsletter endpoint's default asks for every block of the schema."""
    assert get_args(Block) == BLOCKS
