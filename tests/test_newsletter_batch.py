"""The newsletter composed a batch at a time writes the letters the one-by-one path writes:
the same offers, scores, reasons, stages and fallbacks, under a calibrated propensity with
plateaus, an offer policy with values, weights, campaigns, fallback offers and budgets that
run out during the call, a tight category cap, and customers the batch must leave to the
one-by-one path (live events, responses, control group, erasure, no consent)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from store_backends import ERASURE_KEY

from features.snapshot import load_snapshot
from serving import newsletter_batch
from serving.arbitration import higher_rows
from serving.assignment import ControlGroup
from serving.engine import Engine, Letter, PolicySettings
from serving.newsletter import Newsletter
from serving.offer_policy import from_json, parse
from serving.store import Store
from training.calibration import Calibration, Curve

BLOCKS = ("profile", "lifecycle", "last_visit", "regional")
STEPPED = Calibration(Curve(np.array([0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.05, 0.0]), "holdout", 9))
DEMO_POLICY = Path(__file__).resolve().parents[1] / "nbo" / "jobs" / "demo_policy.yaml"


@pytest.fixture(scope="module")
def blend_dir(saved_model: Callable[[str, dict], Path]) -> Path:
    return saved_model("blend", {})


@pytest.fixture
def now(snapshot_dir: Path) -> datetime:
    return load_snapshot(snapshot_dir).now.to_pydatetime()


def shop_engine(folder: Path, tmp_path: Path, now: datetime,
                settings: PolicySettings = PolicySettings()) -> tuple[Engine, list[str]]:
    """An engine whose customers have e-mail consent, but for a few without it or without
    personalisation; a few with impressions, a dismissal, live events; one erased."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    engine = Engine.load(folder, "1", store, settings)
    engine.calibration = STEPPED
    customers = [str(c) for c in engine.customers.names]
    for n, customer in enumerate(customers):
        if n % 17 != 5:
            store.set_consents(customer, {"email": (True, True)}
                               | ({"personalization": (False, False)} if n % 13 == 2 else {}),
                               "test", now)
    offer = [str(p) for p in engine.items.names]
    store.append_feedback(
        [{"customer_id": customers[n], "product_id": offer[n % len(offer)],
          "action": "impression", "timestamp": now - timedelta(days=1), "request_id": f"i{n}{k}"}
         for n in range(0, 60, 3) for k in range(3)]
        + [{"customer_id": customers[7], "product_id": offer[1], "action": "dismiss",
            "timestamp": now - timedelta(days=1), "request_id": "d7"}], now)
    store.append_events([{"event_id": f"e{n}", "customer_id": customers[n],
                          "product_id": offer[n], "event_type": "view", "quantity": 1,
                          "timestamp": now - timedelta(minutes=5)} for n in (11, 12)], now)
    store.erase(customers[20], "test", now, {})
    return engine, [*customers, "nobody-we-know", customers[3]]  # an unknown and a repeat


def one_by_one(engine: Engine, customers: list[str], now: datetime) -> list[Letter]:
    plain = Newsletter.plain
    Newsletter.plain = lambda *_: []  # type: ignore[assignment,method-assign]
    try:
        return engine.newsletter(customers, BLOCKS, now)
    finally:
        Newsletter.plain = plain  # type: ignore[method-assign]


def batched(engine: Engine, customers: list[str], now: datetime,
            monkeypatch: pytest.MonkeyPatch) -> tuple[list[Letter], int]:
    """The letters and how many customers the batch composed."""
    composed = []
    compose = newsletter_batch.compose

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        letters = compose(*args, **kwargs)
        composed.extend(letter for letter in letters if letter is not None)
        return letters

    monkeypatch.setattr("serving.newsletter.compose", counting)
    return engine.newsletter(customers, BLOCKS, now), len(composed)


def assert_same_letters(first: list[Letter], second: list[Letter]) -> None:
    assert len(first) == len(second)
    differing = [(a, b) for a, b in zip(first, second, strict=True) if a != b]
    assert not differing, f"{len(differing)} letters differ, first: {differing[0]}"


@pytest.mark.parametrize("policy", ["neutral", "demo", "tight"])
def test_the_batch_writes_the_letters_of_the_one_by_one_path(
        blend_dir: Path, tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch,
        policy: str) -> None:
    settings = PolicySettings(max_per_category=1) if policy == "tight" else PolicySettings()
    engine, customers = shop_engine(blend_dir, tmp_path / "batch", now, settings)
    reference, _ = shop_engine(blend_dir, tmp_path / "one", now, settings)
    if policy == "demo":  # a budget that runs out during the call
        text = DEMO_POLICY.read_text().replace("limit: 500, period: day",
                                               "limit: 7, period: day")
        for each in (engine, reference):
            each.use_policy(parse(text))
    if policy == "tight":  # fallback offers for every block
        fallbacks = [str(p) for p in engine.items.names[:4]]
        for each in (engine, reference):
            each.use_policy(from_json({"version": "tight", "fallbacks": {"blocks": {
                block: fallbacks for block in BLOCKS}}}))
    letters, composed = batched(engine, customers, now, monkeypatch)
    expected = one_by_one(reference, customers, now)
    assert_same_letters(letters, expected)
    assert composed >= 0.8 * len(customers)  # the batch wrote most of them
    assert sum(bool(letter.blocks) for letter in letters) >= 0.8 * len(customers)
    assert {letter.no_mail for letter in letters} >= {"erased", "unknown customer",
                                                       "no e-mail consent with double opt-in"}
    if policy == "demo":
        assert sum(b.product_id == "winback15" for letter in letters for b in letter.blocks) \
            == 7  # and no more: the rest were refused
    if policy == "tight":
        assert any(b.reason == "featured offer" for letter in letters for b in letter.blocks)


def test_the_control_group_is_left_to_the_one_by_one_path(
        blend_dir: Path, tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = PolicySettings(control=ControlGroup(0.3, mail="baseline"))
    engine, customers = shop_engine(blend_dir, tmp_path / "batch", now, settings)
    reference, _ = shop_engine(blend_dir, tmp_path / "one", now, settings)
    letters, composed = batched(engine, customers, now, monkeypatch)
    assert_same_letters(letters, one_by_one(reference, customers, now))
    controls = sum(letter.arm == "control" for letter in letters)
    assert controls > 0 and composed <= len(customers) - controls


def test_each_rows_offers_count_the_offers_of_their_row_scoring_higher() -> None:
    rng = np.random.default_rng(4)
    for _ in range(100):
        scores = rng.integers(0, 6, (int(rng.integers(1, 8)), int(rng.integers(1, 40))))
        scores = scores.astype(float)
        counts = (scores[:, np.newaxis, :] > scores[:, :, np.newaxis]).sum(axis=2)
        for cap in (None, 0, 1, 3, scores.shape[1] - 1, scores.shape[1], scores.shape[1] + 2):
            limit = scores.shape[1] if cap is None else max(cap, 0)
            assert higher_rows(scores, cap).tolist() == np.minimum(counts, limit).tolist()


def test_each_rows_best_candidate_is_the_highest_key_then_the_highest_score_then_the_first(
        ) -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        rows, n = int(rng.integers(1, 6)), int(rng.integers(1, 30))
        key = rng.integers(0, 4, (rows, n)).astype(float)  # ties in the key...
        key[rng.random((rows, n)) < 0.2] = -np.inf
        then = rng.integers(0, 3, (rows, n)).astype(float)  # ...and in the score
        candidates = rng.random((rows, n)) < rng.random()
        columns = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
        for chosen in (None, columns):
            among = np.arange(n) if chosen is None else chosen
            expected = []
            for r in range(rows):
                places = [p for p, c in enumerate(among) if candidates[r, c]]
                if not places:
                    expected.append(newsletter_batch.NONE)
                    continue
                highest = max(key[r, among[p]] for p in places)
                tied = [p for p in places if key[r, among[p]] == highest]
                best = max(then[r, among[p]] for p in tied)
                expected.append(next(p for p in tied if then[r, among[p]] == best))
            assert newsletter_batch.best_rows(key, candidates, then, chosen).tolist() == expected
