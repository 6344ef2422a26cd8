"""Exploration: Thompson sampling among offers with few impressions, within every rule, with
the probability of each choice in the decision log."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from store_backends import ERASURE_KEY

from features.snapshot import load_snapshot
from serving.assignment import CONTROL, ControlGroup
from serving.decision_log import ranking_row
from serving.engine import Engine, PolicySettings, Request
from serving.explore import Exploration, Posteriors, explore
from serving.policy import Consent
from serving.reasons import EXPLORED
from serving.store import Store

EVERYTHING = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)


def posteriors(impressions: list[int], clicks: list[int], minimum: int = 100) -> Posteriors:
    return Posteriors.from_counts(np.array(impressions), np.array(clicks), minimum)


def test_explored_offers_are_uncertain_allowed_new_to_the_list_and_within_the_cap() -> None:
    n = 12
    category = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    allowed = np.ones(n, dtype=bool)
    allowed[[4, 10]] = False  # a rule took them
    known = posteriors([500] * 3 + [10] * 9, [20] * 3 + [1] * 9)  # 0-2 are known
    picked = np.array([0, 1, 6])
    seen = set()
    for seed in range(400):
        done = explore(picked, allowed, known, category, 2, 0.5, np.random.default_rng(seed))
        assert len(set(done.items.tolist())) == 3
        for item, was, p in zip(done.items, done.explored, done.probabilities, strict=True):
            if was:
                assert item not in (0, 1, 2, 4, 6, 10) and 0 < p <= 0.5
                seen.add(int(item))
            else:
                assert item in picked and p == 0.5
        assert np.bincount(category[done.items]).max() <= 2
    assert seen == {3, 5, 7, 8, 9, 11}
    same = explore(picked, allowed, known, category, 2, 0.0, np.random.default_rng(0))
    assert same.items.tolist() == picked.tolist() and same.probabilities.tolist() == [1.0] * 3


def test_the_logged_probability_is_how_often_the_offer_is_chosen_for_its_slot() -> None:
    """A posterior that looks good is drawn more often, and the probability each choice
    carries matches how often it is made."""
    category = np.arange(5)
    allowed = np.ones(5, dtype=bool)
    beliefs = posteriors([1000, 40, 40, 40, 5], [50, 8, 2, 2, 0])
    chosen, said = np.zeros(5), np.zeros(5)
    runs = 4000
    for seed in range(runs):
        done = explore(np.array([0]), allowed, beliefs, category, 1, 0.4,
                       np.random.default_rng(seed))
        item = int(done.items[0])
        chosen[item] += 1
        said[item] = said[item] + done.probabilities[0]
    frequency = chosen / runs
    assert abs(frequency[0] - 0.6) < 0.03  # ranking keeps the slot 1 - share of the time
    mean_said = said[1:] / np.maximum(chosen[1:], 1)
    for item in range(1, 5):
        assert abs(frequency[item] - mean_said[item - 1]) < 0.02, (item, frequency, mean_said)
    assert frequency[1] > frequency[2]  # 8 clicks of 40 beat 2 of 40


def test_posteriors_count_the_feedback_log_of_the_window(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", ERASURE_KEY)
    at = datetime(2026, 7, 1)
    rows = [{"customer_id": f"c{i}", "product_id": "p1", "action": action,
             "request_id": f"r{i}", "timestamp": at - timedelta(days=days)}
            for i, (action, days) in enumerate([("impression", 1), ("impression", 2),
                                                ("click", 1), ("impression", 40)])]
    store.append_feedback(rows, at)
    impressions, clicks = store.response_counts(at - timedelta(days=30),
                                                np.array(["p1", "p2"]))
    assert impressions.tolist() == [2, 0] and clicks.tolist() == [1, 0]
    store.close()


@pytest.fixture
def exploring(model_dir: Path, tmp_path: Path) -> Engine:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    return Engine.load(model_dir, "1", store, PolicySettings(
        exploration=Exploration(0.5, min_impressions=10**6),
        control=ControlGroup(0.3, "explore")))


def test_the_engine_explores_only_what_the_rules_allow_and_logs_the_probabilities(
        exploring: Engine, snapshot_dir: Path) -> None:
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    customers = [str(c) for c in exploring.customers.names[:60]]
    explored_any = False
    for customer in customers:
        request = Request(customer, k=8)
        ranking = exploring.rank(request, now, EVERYTHING)
        if exploring.settings.control.arm(customer, now) == CONTROL:
            assert not ranking.probabilities  # the baseline, unexplored
            continue
        allowed = exploring.prepare(request, now, EVERYTHING).allowed()
        served = exploring.indices([o.product_id for o in ranking.offers], "served")
        assert allowed[served].all()
        assert len(ranking.probabilities) == len(ranking.offers)
        for offer, p in zip(ranking.offers, ranking.probabilities, strict=True):
            assert (p < 0.5) == (offer.reason == EXPLORED) or p == 1.0
            explored_any |= offer.reason == EXPLORED
        logged = ranking_row(ranking, "web", "rank", now)["offers"]
        assert [o["probability"] for o in logged] == ranking.probabilities
    assert explored_any
    plain = replace(exploring.settings, exploration=Exploration())
    exploring.settings = plain
    assert not exploring.rank(Request(customers[0], k=8), now, EVERYTHING).probabilities


def test_the_logged_probability_of_an_explored_offer_is_its_chance_to_be_in_the_list() -> None:
    """Any of a list's slots may draw an offer: what the log keeps is the chance that it is
    in the list at all, which off-policy estimates divide by."""
    category = np.arange(40)
    allowed = np.ones(40, dtype=bool)
    beliefs = posteriors([1000] * 4 + [20] * 36, [10] * 4 + [2] * 36)
    picked = np.arange(4)
    appeared, said = np.zeros(40), np.zeros(40)
    runs = 3000
    for seed in range(runs):
        done = explore(picked, allowed, beliefs, category, 1, 0.3,
                       np.random.default_rng(seed))
        for item, p, was in zip(done.items, done.probabilities, done.explored, strict=True):
            if was:
                appeared[item] += 1
                said[item] += p
    explored = appeared > 0
    frequency = appeared[explored].sum() / runs / explored.sum()
    assert abs(said[explored].sum() / appeared[explored].sum() - frequency) < 0.15 * frequency


def test_with_priorities_exploration_chooses_among_the_offers_ranking_rates_best() -> None:
    n = 60
    category = np.arange(n)
    allowed = np.ones(n, dtype=bool)
    allowed[59] = False  # the best-rated offer is ruled out
    beliefs = posteriors([10] * n, [1] * n)
    priority = np.arange(n, dtype=float)  # the higher the index, the better rated
    chosen: set[int] = set()
    for seed in range(300):
        done = explore(np.array([0, 1]), allowed, beliefs, category, 1, 0.5,
                       np.random.default_rng(seed), priority, among=5)
        chosen |= set(done.items[done.explored].tolist())
    assert chosen == {54, 55, 56, 57, 58}


def test_the_engine_explores_among_as_many_candidates_as_set(
        model_dir: Path, tmp_path: Path, snapshot_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from features.settings import Settings

    monkeypatch.setenv("NBO_EXPLORE_SHARE", "0.5")
    monkeypatch.setenv("NBO_EXPLORE_CANDIDATES", "1")
    settings = PolicySettings.from_settings(Settings())
    assert settings.exploration.candidates == 1 and settings.exploration.share == 0.5
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    customers = [str(c) for c in Engine.load(model_dir, "1", store, settings)
                 .customers.names[:40]]
    most = {}
    for candidates in (1, 20):
        engine = Engine.load(model_dir, "1", store, replace(settings, exploration=Exploration(
            0.5, min_impressions=10**6, seed=3, candidates=candidates)))
        most[candidates] = max(sum(o.reason == EXPLORED for o in engine.rank(
            Request(c, k=8), now, EVERYTHING).offers) for c in customers)
    assert most[1] == 1 and most[20] > 1
    store.close()
