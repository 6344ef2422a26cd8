"""The contract every model passes, as a mixin (the way implicit's shared recommender test
works): a model's test class sets ``kind`` and ``params`` and inherits every check. The data
is a checkerboard whose right answer is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from features.ids import IdMap
from training.data import TrainData
from training.models import create
from training.models.base import POPULAR, Query, Recommender


def checkerboard(users: int = 40, items: int = 20, seed: int = 0) -> tuple[TrainData, dict]:
    """Two taste groups; each user bought every item of their group's block but one.

    The held-out item of a user's own block must outrank every item of the other block.
    """
    rng = np.random.default_rng(seed)
    group = np.arange(users) % 2
    half = items // 2
    rows, cols, held_out = [], [], {}
    for u in range(users):
        block = np.arange(half) + group[u] * half
        hidden = int(rng.choice(block))
        held_out[u] = hidden
        for i in block:
            if i != hidden:
                rows.append(u)
                cols.append(i)
    matrix = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                               shape=(users, items))
    ages = matrix.copy()
    ages.data = rng.uniform(0.0, 90.0, ages.nnz).astype(np.float32)
    customers = IdMap([f"u{u}" for u in range(users)])
    products = IdMap([f"i{i}" for i in range(items)])
    customer_features = pd.DataFrame({
        "region": np.where(group == 0, "north", "south"), "age_band": "35-44",
        "lifecycle_stage": "active", "segment": np.where(group == 0, "a", "b"),
    }, index=customers.ids)
    item_features = pd.DataFrame({
        "category": np.where(np.arange(items) < half, "left", "right"), "brand": "x",
        "price_band": "mid", "offer_type": "product",
    }, index=products.ids)
    data = TrainData(customers, products, matrix, customer_features, item_features, ages)
    return data, {"group": group, "held_out": held_out, "half": half}


BOARD = checkerboard()


def traces_of(customer_id: str, folder: Path) -> list[str]:
    """Files under ``folder`` holding the id as text, UTF-8 (JSON) or UTF-32 (numpy)."""
    needles = (customer_id.encode(), customer_id.encode("utf-32-le"))
    return [str(path.relative_to(folder)) for path in sorted(folder.rglob("*"))
            if path.is_file() and any(n in path.read_bytes() for n in needles)]


class RecommenderContract:
    kind: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    personal: ClassVar[bool] = True  # ranks customers from their history

    @pytest.fixture(scope="class")
    def fitted(self) -> Recommender:
        return create(self.kind, self.params).fit(BOARD[0])

    def test_the_held_out_item_outranks_the_other_block(self, fitted: Recommender) -> None:
        if not self.personal:
            pytest.skip(f"{self.kind} does not rank from history")
        data, truth = BOARD
        scores, half = fitted.score(data.customers.to_list()), truth["half"]
        wins = sum(scores[u, hidden] > scores[u, np.arange(half) + (1 - truth["group"][u])
                                              * half].max()
                   for u, hidden in truth["held_out"].items())
        assert wins / len(truth["held_out"]) >= 0.9

    def test_save_load_gives_the_same_scores(self, fitted: Recommender, tmp_path: Path) -> None:
        ids = [*fitted.customers.to_list()[:5], "stranger"]
        loaded = type(fitted).load(fitted.save(tmp_path / self.kind))
        assert loaded.kind == self.kind and loaded.params() == fitted.params()
        np.testing.assert_allclose(loaded.score(ids), fitted.score(ids), rtol=1e-5, atol=1e-6)

    def test_refit_with_the_same_seed_is_deterministic(self) -> None:
        data, _ = BOARD
        ids = data.customers.to_list()
        first = create(self.kind, self.params).fit(data).score(ids)
        np.testing.assert_array_equal(first, create(self.kind, self.params).fit(data).score(ids))

    def test_config_round_trips_through_flat_params(self) -> None:
        model = create(self.kind, self.params)
        assert type(model).from_params(model.params()).config == model.config
        with pytest.raises(ValueError, match=r"extra|not permitted"):
            type(model).from_params({**model.params(), "nonsense": 1})

    def test_the_search_space_names_real_config_fields(self) -> None:
        model = create(self.kind, self.params)
        assert set(type(model).search_space) <= set(model.params())

    def test_an_unknown_customer_without_history_gets_popularity(self, fitted: Recommender
                                                                  ) -> None:
        answer = fitted.answer(Query(["stranger", "u0"]))
        np.testing.assert_allclose(answer.scores[0], fitted.popularity)
        assert answer.scores.dtype == np.float32 and answer.history.shape[0] == 2
        if self.personal:
            assert answer.fallback[0] == POPULAR and answer.fallback[1] is None
            assert answer.personalised.tolist() == [False, True]

    def test_an_unknown_customer_with_a_session_history_is_personalised(
            self, fitted: Recommender) -> None:
        if not self.personal:
            pytest.skip(f"{self.kind} does not rank from history")
        data, truth = BOARD
        session = sparse.csr_matrix(([1.0, 1.0], ([0, 0], [0, 1])), shape=(1, len(data.items)))
        answer = fitted.answer(Query(["stranger"], history=session))
        assert answer.fallback[0] is None
        assert answer.scores[0, 2:truth["half"]].mean() > answer.scores[0, truth["half"]:].mean()

    def test_a_forgotten_customer_is_unknown_and_leaves_no_trace(self, tmp_path: Path) -> None:
        """Every file the model saves is read for the id: LightFM once kept 'id:<customer>'
        in its saved vocabulary while the checks of its arrays passed."""
        data, _ = BOARD
        model = create(self.kind, self.params).fit(data)
        # an id no other id or JSON escape contains ("u0" is in every "\u0000")
        gone, kept, row = "u17", "u1", 17
        assert traces_of(gone, model.save(tmp_path / "before")), "the scan finds nothing"
        before_kept = model.score([kept])
        assert model.forget([gone, "never-seen"]) == 1
        assert model.customers.index_of([gone])[0] == -1
        assert model.matrix[row].nnz == 0
        np.testing.assert_allclose(model.score([gone])[0], model.popularity)
        np.testing.assert_allclose(model.score([kept]), before_kept, rtol=1e-5, atol=1e-6)
        folder = model.save(tmp_path / "after")
        assert traces_of(gone, folder) == []
        stored = np.load(folder / "arrays.npz")
        if "user_factors" in stored.files:
            assert not stored["user_factors"][row].any()
        if len(stored.get("customer_group", [])):
            assert stored["customer_group"][row] == -1
        assert gone not in json.loads((folder / "customers.json").read_text())

    def test_what_it_holds_of_a_customer_is_readable_and_gone_after_forgetting(self) -> None:
        """The access report's view of the model: the history it scores from, as offer ids
        and weights, and its own parameters of the customer; nothing once forgotten."""
        data, _ = BOARD
        model = create(self.kind, self.params).fit(data)
        held = model.held("u17")
        assert held["known"] and held["model"] == self.kind
        row = model.matrix[17]
        expected = {str(model.items.names[i]): float(w)
                    for i, w in zip(row.indices, row.data, strict=True)}
        assert {h["product_id"]: h["weight"] for h in held["history"]} == pytest.approx(expected)
        json.dumps(held)  # readable: plain JSON
        model.forget(["u17"])
        assert model.held("u17") == {"model": self.kind, "known": False, "history": []}
        assert model.held("nobody")["known"] is False

    def test_a_reason_is_the_same_asked_alone_together_or_in_a_batch(
            self, fitted: Recommender) -> None:
        """The newsletter explains many customers' offers in one call
        (``explain_rows``); a request explains its list (``explain``): the same reasons."""
        customers = BOARD[0].customers.to_list()[:10]
        names = list(fitted.items.names)
        batch = fitted.explain_rows(np.repeat(fitted.customers.index_of(customers), len(names)),
                                    np.tile(np.arange(len(names)), len(customers)))
        together = [r for c in customers for r in fitted.explain(c, names)]
        alone = [fitted.explain(c, [name])[0] for c in customers for name in names]
        assert batch == together == alone
        if fitted.pair_similarity(np.array([0]), np.array([1])) is not None:
            assert sum(r.code == "because_you_bought" for r in batch) > len(batch) // 4

    def test_a_customers_scores_do_not_depend_on_who_is_scored_beside_them(
            self, fitted: Recommender) -> None:
        """Known customers (from their training) and unknown ones (from a history given)
        scored in one call, and each alone: the same scores."""
        data = BOARD[0]
        rng = np.random.default_rng(1)
        given = sparse.random(4, len(data.items), density=0.3, format="csr", dtype=np.float32,
                              random_state=rng)
        given.data[:] = rng.uniform(0.5, 2.0, given.nnz)
        rows = np.array([3, -1, 7, -1])
        history = sparse.vstack([data.matrix[3], given[1], data.matrix[7], given[3]]).tocsr()
        features = data.customer_features.iloc[[3, 0, 7, 1]]
        together = fitted.raw_scores(rows, history, features)
        for i in range(len(rows)):
            alone = fitted.raw_scores(rows[i:i + 1], history[i], features.iloc[i:i + 1])
            np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=1e-6)
        if self.personal:  # the histories given count
            assert not np.allclose(together[1], together[3])

    def test_one_customer_and_no_customers(self) -> None:
        one = sparse.csr_matrix(np.array([[1.0, 0.0, 1.0, 0.0]], dtype=np.float32))
        features = pd.DataFrame({"region": ["x"], "age_band": ["u"], "lifecycle_stage": ["new"],
                                 "segment": ["s"]}, index=pd.Index(["u0"]))
        items = pd.DataFrame({"category": list("aabb"), "brand": "b", "price_band": "mid",
                              "offer_type": "product"},
                             index=pd.Index([f"i{i}" for i in range(4)]))
        params = self.params | ({"factors": 2} if self.kind in ("als", "bpr") else {}) | (
            {"als.factors": 2} if self.kind == "blend" else {})
        data = TrainData(IdMap(["u0"]), IdMap(items.index), one, features, items)
        model = create(self.kind, params).fit(data)
        assert model.score(["u0"]).shape == (1, 4)
        assert model.score([]).shape == (0, 4)
