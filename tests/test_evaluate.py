"""Time split and metrics: no leakage across the cut-off, metrics with known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from features.contract import load_dataset
from training.data import TrainData
from training.evaluate import (
    evaluate,
    ranked_scores,
    ranking_metrics,
    taken_events,
    time_split,
    value_tradeoff,
)
from training.fallbacks import RegionalPopularity
from training.models import create
from training.models.base import Recommender
from training.ranking import top_k


def test_metrics_on_a_hand_computed_example() -> None:
    hits = np.array([[1, 0, 1], [0, 0, 0]], dtype=bool)
    m = ranking_metrics(hits, np.array([2, 1]), k=3)
    assert m["precision"].tolist() == pytest.approx([2 / 3, 0])
    assert m["recall"].tolist() == pytest.approx([1.0, 0])
    assert m["hit_rate"].tolist() == [1.0, 0.0]
    assert m["map"][0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg"][0] == pytest.approx((1 + 1 / np.log2(4)) / ideal)


def test_top_k_is_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2]]


@pytest.fixture(scope="module")
def data(shop: Path):  # type: ignore[no-untyped-def]
    return load_dataset(shop)


def cutoff_of(events: pd.DataFrame) -> pd.Timestamp:
    return events["timestamp"].max() - pd.Timedelta(days=60)


def test_split_uses_nothing_after_the_cut_off(data) -> None:  # type: ignore[no-untyped-def]
    """A purchase planted after the cut-off changes the truth but not the training input."""
    cutoff = cutoff_of(data.events)
    base = time_split(data.events, data.products, data.customers, cutoff)
    customer = base.data.customers.ids[0]
    product = str(data.products["product_id"].iloc[-9])
    planted = pd.DataFrame([{**data.events.iloc[0].to_dict(), "customer_id": customer,
                             "product_id": product, "event_type": "purchase",
                             "timestamp": cutoff + pd.Timedelta(days=1), "quantity": 50}])
    later = time_split(pd.concat([data.events, planted], ignore_index=True), data.products,
                       data.customers, cutoff)
    assert (later.data.matrix != base.data.matrix).nnz == 0
    assert (later.data.ages != base.data.ages).nnz == 0
    pd.testing.assert_frame_equal(later.features.customer_state, base.features.customer_state)
    row, col = base.data.customers.index_of([customer])[0], base.data.items.index_of([product])[0]
    assert later.truth[row, col] == 1


def test_ages_are_days_from_a_pairs_last_event_to_the_cut_off(data) -> None:  # type: ignore[no-untyped-def]
    cutoff = cutoff_of(data.events)
    split = time_split(data.events, data.products, data.customers, cutoff)
    ages = split.data.ages.tocoo()
    assert ages.nnz == split.data.matrix.nnz
    before = data.events[data.events["timestamp"] < cutoff]
    last = before.groupby(["customer_id", "product_id"])["timestamp"].max()
    for i in np.random.default_rng(0).choice(ages.nnz, 50, replace=False):
        customer = split.data.customers.names[ages.row[i]]
        product = split.data.items.names[ages.col[i]]
        expected = (cutoff - last[(customer, product)]).total_seconds() / 86_400
        assert ages.data[i] == pytest.approx(expected, rel=1e-5)


def test_novel_truth_excludes_what_was_bought_before(data) -> None:  # type: ignore[no-untyped-def]
    split = time_split(data.events, data.products, data.customers, cutoff_of(data.events))
    results = evaluate(create("popularity").fit(split.data), split)
    tasks = results[results["group"] == "overall"].set_index("task")
    assert tasks.loc["novel", "customers"] <= tasks.loc["all", "customers"]
    assert {"overall", "cold-start"} <= set(results["group"])
    assert any(g.startswith("stage: ") for g in results["group"])


def test_a_personal_model_beats_popularity_on_the_generated_shop(data) -> None:  # type: ignore[no-untyped-def]
    split = time_split(data.events, data.products, data.customers, cutoff_of(data.events))
    def ndcg(kind: str, params: dict) -> float:
        model = create(kind, params).fit(split.data)
        table = evaluate(model, split).set_index(["task", "group"])
        return float(table.loc[("novel", "overall"), "ndcg"])
    assert ndcg("ease", {"l2": 50.0}) > 1.2 * ndcg("popularity", {})


class Oracle(Recommender):
    """Knows the test month (truth) and puts every earlier purchase above it: with the
    "novel" task's filter of what was bought before, it ranks only right answers first."""

    kind = "oracle"

    def __init__(self, truth: sparse.csr_matrix, before: sparse.csr_matrix) -> None:
        super().__init__()
        self.truth, self.before = truth, before

    def _fit(self, data: TrainData) -> None:
        pass

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        scores = np.zeros((len(rows), len(self.items)), dtype=np.float32)
        known = rows >= 0
        scores[known] = (self.truth[rows[known]] + 2 * self.before[rows[known]]).toarray()
        return scores

    def _fallback(self, rows: np.ndarray, history: sparse.csr_matrix,
                  customer_features: pd.DataFrame | None) -> np.ndarray:
        return np.full(len(rows), None, dtype=object)


def test_novel_ranks_without_what_was_bought_before(data) -> None:  # type: ignore[no-untyped-def]
    split = time_split(data.events, data.products, data.customers, cutoff_of(data.events))
    oracle = Oracle(split.truth, split.bought_before).fit(split.data)
    table = evaluate(oracle, split).set_index(["task", "group"])
    assert table.loc[("novel", "overall"), "ndcg"] == pytest.approx(1.0)
    assert table.loc[("all", "overall"), "ndcg"] < 1.0  # what was bought before comes first


def test_customers_the_model_cannot_rank_are_ranked_by_their_regions_best_sellers(data) -> None:  # type: ignore[no-untyped-def]
    """Offline, a customer without history gets what serving gives them: popular in their
    region (built from purchases before the cut-off), popular overall where it is unknown."""
    split = time_split(data.events, data.products, data.customers, cutoff_of(data.events))
    model = create("als", {"factors": 8, "iterations": 2}).fit(split.data)
    fallbacks = RegionalPopularity(split.regions, split.bought_before)
    rows = np.flatnonzero(split.cold)
    regions = split.regions[rows]
    assert len(rows) and all(regions)
    regions[0] = None  # and one whose region is not known
    ids = split.data.customers.ids[rows].to_numpy()
    scores = ranked_scores(model, ids, split.data.customer_features.iloc[rows], fallbacks,
                           regions)
    popular = top_k(model.popularity[None, :], 10)[0]
    differs = 0
    for row, region in enumerate(regions):
        expected = (fallbacks.of(region) if region else model.popularity).astype(np.float64)
        np.testing.assert_array_equal(scores[row], expected)
        differs += not np.array_equal(top_k(scores[row:row + 1], 10)[0], popular)
    assert differs  # the regions' lists are not the overall one
    table = evaluate(model, split).set_index(["task", "group"])
    assert table.loc[("all", "cold-start"), "customers"] > 0


def test_value_at_k_adds_what_the_hits_are_worth(data) -> None:  # type: ignore[no-untyped-def]
    hits = np.array([[1, 0, 1], [0, 0, 0]], dtype=bool)
    worth = np.array([[10.0, 99.0, 2.5], [7.0, 7.0, 7.0]])
    assert ranking_metrics(hits, np.array([2, 1]), 3, worth)["value"].tolist() == [12.5, 0.0]
    split = time_split(data.events, data.products, data.customers, cutoff_of(data.events))
    products = data.products.set_index("product_id")
    item = split.data.items.ids[0]
    expected = products.loc[item, "price"] * products.loc[item, "margin"]
    assert split.offer_values[0] == pytest.approx(expected)
    coupon = list(split.data.items.ids).index("welcome10")
    assert split.offer_values[coupon] == 1.0  # a price of 0 and no margin: worth 1
    oracle = Oracle(split.truth, split.bought_before).fit(split.data)
    table = evaluate(oracle, split).set_index(["task", "group"])
    rows = split.test_customers
    truth = split.truth[rows]
    truth = (truth - truth.multiply(split.bought_before[rows])).tocsr()
    truth.eliminate_zeros()
    best = [sorted(truth[i].indices, key=lambda j: j)[:10] for i in range(truth.shape[0])]
    novel = [split.offer_values[b].sum() for b in best if len(b)]
    assert table.loc[("novel", "overall"), "value"] == pytest.approx(np.mean(novel))


def test_the_value_trade_off_at_b_0_is_the_models_own_ranking(data) -> None:  # type: ignore[no-untyped-def]
    split = time_split(data.events, data.products, data.customers, cutoff_of(data.events))
    model = create("ease", {"l2": 50.0}).fit(split.data)
    plain = evaluate(model, split).set_index(["task", "group"]).loc[("all", "overall")]
    curve = np.array([0.3, 0.2, 0.2, 0.1, 0.05, 0.0])  # plateaus: ties keep the model's order
    table = value_tradeoff(model, split, curve, (0.0, 2.0)).set_index("b")
    assert table.loc[0.0, "ndcg"] == pytest.approx(plain["ndcg"])
    assert table.loc[0.0, "value"] == pytest.approx(plain["value"])
    assert table.loc[2.0, "ndcg"] != pytest.approx(plain["ndcg"])  # value reorders


def test_a_shop_without_purchases_is_judged_on_its_high_ratings() -> None:
    """Purchases are what a recommendation should find; a shop that knows only ratings is
    judged on ratings above 2 (low ones are what it should not offer)."""
    events = pd.DataFrame({"event_type": ["rating", "purchase", "rating", "view"],
                           "rating": [5.0, np.nan, 2.0, np.nan]})
    assert taken_events(events).tolist() == [False, True, False, False]
    rated = events[events["event_type"] == "rating"].reset_index(drop=True)
    assert taken_events(rated).tolist() == [True, False]
    three = pd.DataFrame({"event_type": ["rating"] * 3, "rating": ["3", "2", "x"]})
    assert taken_events(three).tolist() == [True, False, False]


def test_the_blend_beats_plain_ease_on_a_ratings_only_shop(tmp_path: Path) -> None:
    """A shop that only knows ratings trains and is judged end to end (low ratings are
    negatives, high ones what to find): the default blend's NDCG@10 leads plain EASE's on
    every customer's next high ratings ("all")."""
    from features.generate import ShopSpec, generate_shop
    from features.snapshot import build_snapshot
    from training.evaluate import fit_and_evaluate
    from training.pipeline import prepare

    generate_shop(ShopSpec(customers=3000, seed=7, ratings_only=True), tmp_path / "shop")
    build_snapshot(tmp_path / "shop", tmp_path / "snapshot")
    split = prepare(tmp_path / "snapshot").split
    ndcg = {}
    for kind in ("ease", "blend"):
        metrics, _ = fit_and_evaluate(create(kind), split)
        overall = metrics[(metrics["group"] == "overall") & (metrics["task"] == "all")]
        ndcg[kind] = float(overall["ndcg"].iloc[0])
    assert ndcg["blend"] > 1.1 * ndcg["ease"] > 0, ndcg
