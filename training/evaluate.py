"""Honest offline evaluation: a time split and ranking metrics at k.

Training sees only events strictly before the cut-off, and features are computed as of the
cut-off from those events alone; the truth is what customers bought after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from features.columns import Columns as C
from features.columns import EventType as E
from features.config import FeatureConfig
from features.snapshot import Features, compute_features
from features.weights import LOW_RATING
from training.data import TrainData
from training.fallbacks import RegionalPopularity
from training.models.base import Query, Recommender
from training.ranking import top_k

TASKS = ("all", "novel")
METRICS = ("ndcg", "recall", "precision", "map", "hit_rate", "value", "coverage")
BATCH = 1024


@dataclass
class Split:
    """Training input before the cut-off and the purchases after it."""

    cutoff: pd.Timestamp
    features: Features
    data: TrainData
    truth: sparse.csr_matrix  # customers of ``data`` x offers: bought in the test window
    bought_before: sparse.csr_matrix  # bought before the cut-off (excluded in "novel")
    test_customers: np.ndarray  # rows of ``data`` with at least one test purchase
    values: np.ndarray | None = None  # per offer of ``data``: what a hit is worth

    @property
    def offer_values(self) -> np.ndarray:
        return self.values if self.values is not None else np.ones(len(self.data.items))

    @property
    def stages(self) -> np.ndarray:
        state = self.features.customer_state.set_index(C.customer)["lifecycle_stage"]
        return state.reindex(self.data.customers.ids).to_numpy()

    @property
    def regions(self) -> np.ndarray:
        """Each customer's region as of the cut-off, None where not known."""
        state = self.features.customer_state.set_index(C.customer)[C.region]
        regions = state.reindex(self.data.customers.ids)
        return regions.astype(object).where(regions.notna(), None).to_numpy(dtype=object)

    @property
    def cold(self) -> np.ndarray:
        """Customers without a single positive training interaction."""
        return np.diff(self.data.matrix.indptr) == 0


def time_split(
    events: pd.DataFrame,
    products: pd.DataFrame,
    customers: pd.DataFrame,
    cutoff: pd.Timestamp,
    config: FeatureConfig | None = None,
    test_days: float | None = None,
    feedback: pd.DataFrame | None = None,
) -> Split:
    """Split a history at ``cutoff``; the test window runs ``test_days`` (default: to the end).

    Responses to served offers (``feedback``) before the cut-off join the training signal.
    """
    config = config or FeatureConfig()
    earlier = events[C.timestamp] < cutoff
    before = events[earlier]
    if before.empty:
        raise ValueError(f"no events before the cut-off {cutoff}")
    if feedback is not None:
        feedback = feedback[feedback[C.timestamp] < cutoff]
    features = compute_features(before, products, customers, cutoff, config, feedback=feedback)
    data = TrainData.from_features(features)
    taken = taken_events(events)
    after = events[(events[C.timestamp] >= cutoff) & taken]
    if test_days is not None:
        after = after[after[C.timestamp] < cutoff + pd.Timedelta(days=test_days)]
    truth = _pairs(data, after)
    bought = _pairs(data, events[earlier & taken])
    test_customers = np.flatnonzero(np.diff(truth.indptr) > 0)
    if not len(test_customers):
        raise ValueError(f"nothing taken (bought, or rated above {LOW_RATING} in a shop "
                         f"without purchases) after the cut-off {cutoff} to evaluate on")
    return Split(cutoff, features, data, truth, bought, test_customers,
                 offer_values(products, data))


def taken_events(events: pd.DataFrame) -> pd.Series:
    """The events that say a customer took an offer, what a recommendation should find:
    purchases; in a shop without any (one that knows only ratings), ratings above
    ``LOW_RATING``, as the features count them positive."""
    kinds = events[C.event_type]
    bought = kinds == E.purchase
    if bought.any():
        return bought
    return (kinds == E.rating) & (pd.to_numeric(events[C.rating], errors="coerce")
                                  > LOW_RATING)


def offer_values(products: pd.DataFrame, data: TrainData) -> np.ndarray:
    """What selling each offer is worth, for value@k: price x margin where both are known,
    else the price, else 1."""
    table = products.set_index(C.product).reindex(data.items.ids)
    if C.price not in table:
        return np.ones(len(data.items))
    price = pd.to_numeric(table[C.price], errors="coerce")
    margin = (pd.to_numeric(table[C.margin], errors="coerce") if C.margin in table
              else pd.Series(np.nan, index=table.index))
    value = np.array((price * margin).fillna(price), dtype=float)
    value[~np.isfinite(value) | (value <= 0)] = 1.0
    return value


def _pairs(data: TrainData, events: pd.DataFrame) -> sparse.csr_matrix:
    rows = data.customers.index_of(events[C.customer])
    cols = data.items.index_of(events[C.product])
    keep = (rows >= 0) & (cols >= 0)
    matrix = sparse.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (rows[keep], cols[keep])),
                               shape=(len(data.customers), len(data.items)))
    matrix.data[:] = 1.0  # duplicates summed: back to 0/1
    return matrix


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int,
                    values: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-customer metrics from a hits matrix (customers x k, best first); ``values``
    (customers x k) is what each recommended offer is worth: value@k adds those of the
    hits."""
    hits = hits.astype(float)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return {
        "ndcg": (hits * discounts).sum(axis=1) / ideal,
        "recall": hits.sum(axis=1) / n_relevant,
        "precision": hits.sum(axis=1) / k,
        "map": (precision_at * hits).sum(axis=1) / np.minimum(n_relevant, k),
        "hit_rate": (hits.sum(axis=1) > 0).astype(float),
        "value": (hits * (1.0 if values is None else values)).sum(axis=1),
    }


def evaluate(model: Recommender, split: Split, k: int = 10,
             rows: np.ndarray | None = None) -> pd.DataFrame:
    """Metrics of a fitted model on both tasks: overall, cold-start and per lifecycle stage.

    ``rows`` restricts the evaluation to some of the split's test customers.
    """
    rows = split.test_customers if rows is None else rows
    stages, cold = split.stages[rows], split.cold[rows]
    results = []
    for task, relevant, per_customer, recommended in _tasks(model, split, k, rows):
        groups = {"overall": relevant, "cold-start": relevant & cold}
        groups |= {f"stage: {s}": relevant & (stages == s) for s in pd.unique(stages)}
        for group, mask in groups.items():
            if not mask.any():
                continue
            row = {"task": task, "group": group, "customers": int(mask.sum())}
            row |= {name: float(values[mask].mean()) for name, values in per_customer.items()}
            row["coverage"] = len(np.unique(recommended[mask])) / len(split.data.items)
            results.append(row)
    return pd.DataFrame(results)


def customer_metrics(model: Recommender, split: Split, k: int = 10) -> pd.DataFrame:
    """Each test customer's metrics on each task where they have something to find: one
    row per task and customer (``row`` of the split's data, ``cold`` without training
    history), the material of paired comparisons between models."""
    rows = split.test_customers
    parts = []
    for task, relevant, per_customer, _ in _tasks(model, split, k, rows):
        part = pd.DataFrame({name: values[relevant] for name, values in per_customer.items()})
        part.insert(0, "cold", split.cold[rows][relevant])
        part.insert(0, "row", rows[relevant])
        part.insert(0, "task", task)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _tasks(model: Recommender, split: Split, k: int, rows: np.ndarray
           ) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray], np.ndarray]]:
    """Per task: which of ``rows`` have something to find, their metrics and what was
    recommended to them (both over all of ``rows``)."""
    ids = split.data.customers.ids[rows].to_numpy()
    features = split.data.customer_features.iloc[rows]
    fallbacks = RegionalPopularity(split.regions, split.bought_before)
    for task in TASKS:
        truth = split.truth[rows]
        if task == "novel":
            truth = (truth - truth.multiply(split.bought_before[rows])).tocsr()
            truth.eliminate_zeros()
        per_customer, recommended = _score_task(model, split, ids, features, truth, rows,
                                                fallbacks, task, k)
        yield task, np.diff(truth.indptr) > 0, per_customer, recommended


def _score_task(
    model: Recommender, split: Split, ids: np.ndarray, features: pd.DataFrame,
    truth: sparse.csr_matrix, rows: np.ndarray, fallbacks: RegionalPopularity, task: str,
    k: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    metrics: dict[str, list[np.ndarray]] = {}
    recommended = []
    regions = split.regions[rows]
    for start in range(0, len(ids), BATCH):
        part = slice(start, start + BATCH)
        scores = ranked_scores(model, ids[part], features.iloc[part], fallbacks, regions[part])
        if task == "novel":
            bought = split.bought_before[rows[part]]
            scores[bought.nonzero()] = -np.inf
        best = top_k(scores, k)
        dense_truth = truth[part].toarray() > 0
        hits = np.take_along_axis(dense_truth, best, axis=1)
        n_relevant = np.maximum(dense_truth.sum(axis=1), 1)
        worth = split.offer_values[best]
        for name, values in ranking_metrics(hits, n_relevant, k, worth).items():
            metrics.setdefault(name, []).append(values)
        recommended.append(best)
    return ({name: np.concatenate(parts) for name, parts in metrics.items()},
            np.concatenate(recommended))


def ranked_scores(model: Recommender, ids: np.ndarray, features: pd.DataFrame,
                  fallbacks: RegionalPopularity, regions: np.ndarray) -> np.ndarray:
    """What serving ranks these customers by (float64): the model's answer, with popular in
    their region for the customers it cannot rank, where their region is known."""
    answer = model.answer(Query(ids, customer_features=features))
    scores = answer.scores.astype(np.float64)
    fallbacks.apply(scores, answer.fallback, regions)
    return scores


def value_tradeoff(model: Recommender, split: Split, propensity: np.ndarray,
                   exponents: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0), k: int = 10
                   ) -> pd.DataFrame:
    """NDCG@k and value@k on the "all" task when the model's ranking is arbitrated as
    serving does with ``a = 1`` and no weights: by propensity (``propensity`` by rank, e.g.
    a calibration curve) times value^b, for each ``b`` of ``exponents``; b = 0 is the
    model's own order."""
    rows = split.test_customers
    ids = split.data.customers.ids[rows].to_numpy()
    fallbacks = RegionalPopularity(split.regions, split.bought_before)
    regions, values = split.regions[rows], split.offer_values
    results = {b: {"ndcg": [], "value": []} for b in exponents}  # type: ignore[var-annotated]
    for start in range(0, len(ids), BATCH):
        part = slice(start, start + BATCH)
        scores = ranked_scores(model, ids[part], split.data.customer_features.iloc[rows[part]],
                               fallbacks, regions[part])
        # each offer's rank in the customer's ranking: how many offers score higher
        ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
        chance = propensity[np.minimum(ranks, len(propensity) - 1)]
        truth = split.truth[rows[part]].toarray() > 0
        n_relevant = np.maximum(truth.sum(axis=1), 1)
        for b in exponents:
            # ties in priority keep the model's order, as in serving
            order = np.lexsort((-scores, -(chance * values ** b)), axis=1)[:, :k]
            hits = np.take_along_axis(truth, order, axis=1)
            metrics = ranking_metrics(hits, n_relevant, k, values[order])
            results[b]["ndcg"].append(metrics["ndcg"])
            results[b]["value"].append(metrics["value"])
    return pd.DataFrame([{"b": b, "ndcg": float(np.concatenate(r["ndcg"]).mean()),
                          "value": float(np.concatenate(r["value"]).mean())}
                         for b, r in results.items()])


def fit_and_evaluate(
    model: Recommender, split: Split, k: int = 10,
    report: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, float]:
    """Fit on the split's training data, evaluate, return (metrics, fit seconds)."""
    if report:
        report(f"fitting {model.kind}")
    started = time.perf_counter()
    model.fit(split.data)
    seconds = time.perf_counter() - started
    if report:
        report(f"evaluating {model.kind}")
    return evaluate(model, split, k), seconds
