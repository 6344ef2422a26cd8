"""The engine's parts on their own: ranker, customer state and scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_backends import ERASURE_KEY

from features.snapshot import load_snapshot
from serving import policy, ranker
from serving.engine import Engine, PolicySettings
from serving.live import Activity
from serving.policy import Consent
from serving.state import NO_TIME, NS_PER_DAY
from serving.store import Store
from training.ranking import best_first, top_k

EVERYTHING = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)


def test_one_top_k_for_evaluation_and_serving_with_ties_in_offer_order() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float32)  # many ties
    best = top_k(scores, 7)
    for row in range(len(scores)):
        assert best[row].tolist() == best_first(scores[row], np.arange(30), 7).tolist()
    assert top_k(np.array([[0.1, 0.9, 0.5, 0.7]]), 3).tolist() == [[1, 3, 2]]


def test_the_best_of_many_tied_offers_come_by_the_second_score_then_in_offer_order() -> None:
    """Most offers tied (a priority of zero): the n best are the full sort's n best."""
    rng = np.random.default_rng(4)
    for trial in range(300):
        n = int(rng.integers(1, 300))
        scores = np.where(rng.random(n) < 0.9, 0.0, rng.integers(1, 4, n)).astype(float)
        then = rng.integers(0, 3, n).astype(float) if trial % 2 else None
        candidates = rng.permutation(np.flatnonzero(rng.random(n) < 0.8))
        k = int(rng.integers(1, n + 1))
        keys = ((candidates, -scores[candidates]) if then is None else
                (candidates, -then[candidates], -scores[candidates]))
        expected = candidates[np.lexsort(keys)][:k]
        assert best_first(scores, candidates, k, then).tolist() == expected.tolist(), trial


def test_a_requests_best_offers_are_the_full_sorts_best_whatever_the_scores_hold() -> None:
    """A catalogue's worth of scores (float64 or float32): few or many ties, infinities,
    zeros of either sign, NaN in the scores or in the second score, candidates in any order:
    the n best are the full sort's n best."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        size = int(rng.integers(2, 4_100))
        scores = rng.normal(size=size)
        if trial % 4 == 1:
            scores = np.round(scores * 2) / 2  # many ties
        if trial % 5 == 2:
            scores[rng.integers(0, size, 5)] = [np.inf, -np.inf, 0.0, -0.0, np.inf]
        if trial % 7 == 3:
            scores[rng.integers(0, size)] = np.nan
        then = None if trial % 3 == 0 else np.round(rng.normal(size=size))
        if then is not None and trial % 11 == 4:
            then[rng.integers(0, size, size // 10 + 1)] = np.nan
        if trial % 13 == 5:
            scores = scores.astype(np.float32)
        candidates = np.flatnonzero(rng.random(size) < 0.9)
        if trial % 2:
            candidates = rng.permutation(candidates)
        if not len(candidates):
            continue
        n = int(rng.integers(1, len(candidates) + 1)) if trial % 3 else min(120, len(candidates))
        keys = ((candidates, -scores[candidates]) if then is None else
                (candidates, -then[candidates], -scores[candidates]))
        expected = candidates[np.lexsort(keys)][:n]
        assert best_first(scores, candidates, n, then).tolist() == expected.tolist(), trial
    # every score tied, the second score mostly NaN: the two with one, then the first offers
    then = np.full(300, np.nan)
    then[[250, 40]] = [1.0, 2.0]
    assert best_first(np.zeros(300), np.arange(300), 5, then).tolist() == [40, 250, 0, 1, 2]


def test_the_ranker_caps_each_category_and_counts_what_others_took() -> None:
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    category = np.array([0, 0, 0, 1, 1, 2])
    allowed = np.ones(6, dtype=bool)
    assert ranker.top(scores, allowed, 4, category, 2).tolist() == [0, 1, 3, 4]
    taken = np.array([3])  # a category-1 offer placed elsewhere counts against the cap
    assert ranker.top(scores, allowed, 4, category, 1, taken).tolist() == [0, 5]


def test_a_category_keeps_its_first_offers_along_the_order_counting_those_taken() -> None:
    """Diversity: an offer stays where fewer than the cap of its category came before it
    in the order or were taken elsewhere; the first k that stay."""
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(0, 60))
        category = rng.integers(0, 5, 70)
        order = rng.permutation(70)[:n]
        taken = rng.choice(70, size=int(rng.integers(0, 4)), replace=False) if trial % 2 \
            else None
        cap, k = int(rng.integers(1, 4)), int(rng.integers(0, 12))
        held = [] if taken is None else category[taken].tolist()
        expected = [o for i, o in enumerate(order.tolist())
                    if (category[order[:i]] == category[o]).sum() + held.count(category[o])
                    < cap][:k]
        assert policy.diversify(order, category, cap, k, taken).tolist() == expected, trial


def test_the_ranker_picks_one_offer_as_it_picks_a_list() -> None:
    """The best single offer (each newsletter block's) is the head of the diversified order:
    ties by the second score, then in offer order; full categories left out."""
    rng = np.random.default_rng(3)
    for trial in range(400):
        n = int(rng.integers(1, 40))
        scores = rng.integers(0, 4, n).astype(float)  # many ties
        then = rng.integers(0, 3, n).astype(float) if trial % 2 else None
        category = rng.integers(0, 4, n)
        allowed = rng.random(n) < 0.7
        taken = rng.choice(n, size=min(n, int(rng.integers(0, 4))), replace=False)
        cap = int(rng.integers(1, 3))
        order = best_first(scores, np.flatnonzero(allowed), n, then)
        expected = policy.diversify(order, category, cap, 1, taken)
        assert ranker.top(scores, allowed, 1, category, cap, taken, then).tolist() == \
            expected.tolist(), trial


def test_removals_name_the_first_rule_that_took_each_offer_of_the_unfiltered_top() -> None:
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0])
    masks = {"consent": np.array([True, False, True, True, True]),
             "contact": np.array([True, False, False, True, True])}
    picked = np.array([0, 4])  # offer 3 was allowed but not served: the category cap
    counts, offers = ranker.removed(scores, masks, picked, 4, np.array(list("abcde")))
    assert offers == [("b", "consent"), ("c", "contact"), ("d", "diversity")]
    assert counts["consent"] == counts["contact"] == counts["diversity"] == 1


@pytest.fixture
def engine(model_dir: Path, tmp_path: Path) -> Engine:
    return Engine.load(model_dir, "1", Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY),
                       PolicySettings())


def test_state_and_model_share_one_id_map_so_a_forgotten_customer_is_unknown_to_both(
        engine: Engine) -> None:
    customer = next(str(c) for c in engine.customers.names
                    if engine.state.purchases(engine.row_of(str(c)), 0)[0].size)
    row = engine.row_of(customer)
    assert engine.state.customers is engine.model.customers
    assert engine.forget(customer) == {"model_rows": 1, "state_rows": 1}
    assert engine.row_of(customer) == engine.model.customers.row(customer) == -1
    assert engine.state.purchases(row, 0)[0].size == 0 and engine.state.region[row] is None
    assert engine.forget(customer) == {"model_rows": 0, "state_rows": 0}


def test_a_requests_stage_is_the_stage_of_the_customers_arrays(engine: Engine) -> None:
    """One customer's stage (a request's) against the batch's arrays (the newsletter's), for
    420 customers of the shop (20 who never bought), at the snapshot, 40 days and a year on."""
    state = engine.state
    rows = np.flatnonzero(state.first_ns != NO_TIME)[:400]
    rows = np.concatenate([rows, np.flatnonzero(state.first_ns == NO_TIME)[:20]])
    now_ns = int(np.datetime64(engine.as_of, "ns").astype(np.int64))
    for at in (now_ns, now_ns + 40 * NS_PER_DAY, now_ns + 365 * NS_PER_DAY):
        expected = state.stages(rows, at)
        assert len(set(expected)) >= 2
        assert [state.stage(int(row), at) for row in rows] == expected.tolist()


def test_the_scorer_falls_back_from_the_model_to_the_region_to_popularity(
        engine: Engine, snapshot_dir: Path) -> None:
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    scorer = engine.scorer
    known = str(engine.customers.names[0])
    region = str(engine.state.regions[0])
    assert scorer.score(known, 0, None, "active", now, EVERYTHING).fallback is None
    denied = Consent(False, frozenset(), False)
    assert scorer.score(known, 0, None, "active", now, denied).fallback == "non_personalised"
    regional = scorer.score("new", -1, region, "prospect", now, EVERYTHING)
    assert regional.fallback == "popular_in_region"
    np.testing.assert_allclose(regional.values, engine.state.regional_scores(region))
    assert scorer.score("new", -1, None, "prospect", now, EVERYTHING).fallback == "popular"
    seen = scorer.history(-1, Activity.only(added=np.array([0, 1]),
                                            weights=np.array([0.1, 0.1])))
    session = scorer.score("new", -1, region, "prospect", now, EVERYTHING, seen)
    assert session.fallback is None and session.history is seen


def test_a_reason_names_the_most_telling_thing_done_with_its_product() -> None:
    from serving.reasons import Anchors

    anchors = Anchors(bought=np.array([1]), carted=np.array([1, 2]), wished=np.array([2, 3]),
                      seen=np.array([1, 2, 3, 4]))
    assert [anchors.verb(i) for i in range(6)] == [
        "showed interest in", "bought", "put in your cart", "put on your wish list",
        "looked at", "showed interest in"]
