"""The contract every candidate model passes, on synthetic data whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from features.ids import IdMap
from training.data import TrainData
from training.models import MODELS, Reason, create
from training.models.base import csr_rows

FAST = {  # small but sufficient settings so the suite stays quick
    "popularity": {},
    "als": {"factors": 3, "iterations": 10, "regularization": 0.1},  # the data is rank 2
    "bpr": {"factors": 8, "iterations": 200, "learning_rate": 0.05},
    "itemknn": {"neighbours": 20},
    "ease": {"l2": 10.0},
    "lightfm": {"components": 8, "epochs": 30},
    "blend": {"als.factors": 3, "als.regularization": 0.1, "ease.l2": 10.0,
              "itemknn.neighbours": 20},
}
PERSONAL = [kind for kind in MODELS if kind != "popularity"]


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


@pytest.fixture(scope="module")
def board() -> tuple[TrainData, dict]:
    return checkerboard()


@pytest.fixture(scope="module")
def fitted(board: tuple[TrainData, dict]) -> dict:
    data, _ = board
    return {kind: create(kind, FAST[kind]).fit(data) for kind in MODELS}


@pytest.mark.parametrize("kind", PERSONAL)
def test_held_out_item_outranks_the_other_block(kind: str, fitted: dict, board: tuple) -> None:
    data, truth = board
    model = fitted[kind]
    scores = model.score(data.customers.to_list())
    half = truth["half"]
    wins = 0
    for u, hidden in truth["held_out"].items():
        other = np.arange(half) + (1 - truth["group"][u]) * half
        wins += scores[u, hidden] > scores[u, other].max()
    assert wins / len(truth["held_out"]) >= 0.9


@pytest.mark.parametrize("kind", list(MODELS))
def test_save_load_gives_the_same_scores(kind: str, fitted: dict, tmp_path: Path) -> None:
    model = fitted[kind]
    ids = [*model.customers.to_list()[:5], "stranger"]
    loaded = type(model).load(model.save(tmp_path / kind))
    assert loaded.kind == kind and loaded.params() == model.params()
    np.testing.assert_allclose(loaded.score(ids), model.score(ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(MODELS))
def test_refit_with_the_same_seed_is_deterministic(kind: str, board: tuple) -> None:
    data, _ = board
    ids = data.customers.to_list()
    first = create(kind, FAST[kind]).fit(data).score(ids)
    second = create(kind, FAST[kind]).fit(data).score(ids)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("kind", list(MODELS))
def test_config_round_trips_through_flat_params(kind: str) -> None:
    model = create(kind, FAST[kind])
    again = type(model).from_params(model.params())
    assert again.config == model.config
    with pytest.raises(ValueError, match=r"extra|not permitted"):
        type(model).from_params({**model.params(), "nonsense": 1})


def test_a_nested_setting_keeps_the_rest_of_its_section_as_the_model_sets_it() -> None:
    """The blend's neighbours use bm25 (not the neighbour model's own cosine default), also
    when a trial sets only their number."""
    from training.models.blend import BlendConfig

    config = create("blend", {"itemknn.neighbours": 99}).config
    assert isinstance(config, BlendConfig)
    assert config.itemknn.neighbours == 99
    assert config.itemknn.similarity == BlendConfig().itemknn.similarity == "bm25"


@pytest.mark.parametrize("kind", list(MODELS))
def test_search_space_names_real_config_fields(kind: str) -> None:
    cls = MODELS[kind]
    assert set(cls.search_space) <= set(cls().params())


@pytest.mark.parametrize("kind", list(MODELS))
def test_unknown_customer_without_history_gets_popularity(kind: str, fitted: dict) -> None:
    model = fitted[kind]
    scores = model.score(["stranger"])
    np.testing.assert_allclose(scores[0], model.popularity)


@pytest.mark.parametrize("kind", PERSONAL)
def test_unknown_customer_with_a_session_history_is_personalised(
    kind: str, fitted: dict, board: tuple
) -> None:
    data, truth = board
    model = fitted[kind]
    half = truth["half"]
    session = sparse.csr_matrix(([1.0, 1.0], ([0, 0], [0, 1])), shape=(1, len(data.items)))
    scores = model.score(["stranger"], history=session)[0]
    assert scores[2:half].mean() > scores[half:].mean()


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_forgotten_customer_is_unknown_and_leaves_no_trace(kind: str, board: tuple,
                                                            tmp_path: Path) -> None:
    data, _ = board
    model = create(kind, FAST[kind]).fit(data)
    gone, kept = data.customers.ids[0], data.customers.ids[1]
    before_kept = model.score([kept])
    assert model.forget([gone, "never-seen"]) == 1
    assert model.customers.index_of([gone])[0] == -1
    assert model.matrix[0].nnz == 0
    np.testing.assert_allclose(model.score([gone])[0], model.popularity)
    np.testing.assert_allclose(model.score([kept]), before_kept, rtol=1e-5, atol=1e-6)
    stored = np.load(model.save(tmp_path / kind) / "arrays.npz")
    for name in ("user_factors", "customer_group"):
        if name in stored.files and len(stored[name]):
            assert not np.any(stored[name][0] > 0), name
    assert gone not in json.loads((tmp_path / kind / "customers.json").read_text())


@pytest.mark.parametrize("kind", list(MODELS))
def test_one_user_and_empty_edge_cases(kind: str) -> None:
    one = sparse.csr_matrix(np.array([[1.0, 0.0, 1.0, 0.0]], dtype=np.float32))
    features = pd.DataFrame({"region": ["x"], "age_band": ["u"], "lifecycle_stage": ["new"],
                             "segment": ["s"]}, index=pd.Index(["u0"]))
    items = pd.DataFrame({"category": list("aabb"), "brand": "b", "price_band": "mid",
                          "offer_type": "product"}, index=pd.Index([f"i{i}" for i in range(4)]))
    params = FAST[kind] | ({"factors": 2} if kind in ("als", "bpr") else {}) | (
        {"als.factors": 2} if kind == "blend" else {})
    data = TrainData(IdMap(["u0"]), IdMap(items.index), one, features, items)
    model = create(kind, params).fit(data)
    assert model.score(["u0"]).shape == (1, 4)
    assert model.score([]).shape == (0, 4)


def test_hybrid_ranks_cold_customers_from_their_features(fitted: dict, board: tuple) -> None:
    """A new customer of the 'south' region and segment 'b' gets the south block on top."""
    _, truth = board
    model = fitted["lightfm"]
    described = pd.DataFrame({"region": ["south", "north"], "age_band": ["35-44"] * 2,
                              "lifecycle_stage": ["prospect"] * 2, "segment": ["b", "a"]})
    scores = model.score(["new-south", "new-north"], customer_features=described)
    half = truth["half"]
    assert scores[0, half:].mean() > scores[0, :half].mean()
    assert scores[1, :half].mean() > scores[1, half:].mean()
    assert model.explain("new-south", ["i15"])[0] == Reason("similar_customers")


@pytest.mark.parametrize("kind", ["als", "ease", "itemknn", "blend"])
def test_explanations_point_to_a_bought_product_of_the_same_block(
    kind: str, fitted: dict, board: tuple
) -> None:
    _, truth = board
    model = fitted[kind]
    u, hidden = 0, truth["held_out"][0]
    reason = model.explain("u0", [f"i{hidden}"])[0]
    assert reason.code == "because_you_bought"
    anchor = int(str(reason.anchor)[1:])
    assert anchor // truth["half"] == truth["group"][u] and anchor != hidden


def test_an_unfitted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        create("ease").score(["u0"])


def test_blend_repeat_puts_owned_offers_first(board: tuple) -> None:
    data, _ = board
    model = create("blend", FAST["blend"] | {"repeat": 50.0}).fit(data)
    scores = model.score(["u0"])[0]
    owned = data.matrix[0].indices
    assert scores[owned].min() > np.delete(scores, owned).max()


def test_blend_repeat_orders_owned_offers_by_their_weight() -> None:
    from training.models.blend import own_weights

    history = sparse.csr_matrix(np.array([[0.0, 4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    weights = own_weights(history)
    np.testing.assert_allclose(weights, [[0.0, 1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_recent_buyers_count_by_how_lately_they_took_the_offer() -> None:
    matrix = sparse.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]))
    ages = matrix.copy()
    ages.data = np.array([0.0, 7.0, 7.0, 14.0, np.inf])  # row by row
    empty = pd.DataFrame(index=pd.Index(["a", "b", "c"]))
    data = TrainData(IdMap(["a", "b", "c"]), IdMap(["x", "y", "z"]), matrix, empty, empty, ages)
    np.testing.assert_allclose(data.recent_buyers(7.0), [1.0 + 0.5 + 0.25, 0.5, 0.0])
    undated = TrainData(data.customers, data.items, matrix, empty, empty)
    np.testing.assert_array_equal(undated.recent_buyers(7.0), np.zeros(3))


def test_blend_trend_puts_what_sells_now_first(board: tuple) -> None:
    """Every offer of the board has the same number of buyers; the one all of them took
    yesterday tops the ranking of a customer who owns nothing of its block."""
    data, truth = board
    ages = data.ages.copy()
    ages.data[:] = 60.0
    lately = int(truth["half"]) + 3  # in the second block
    ages.data[ages.indices == lately] = 1.0
    dated = TrainData(data.customers, data.items, data.matrix, data.customer_features,
                      data.item_features, ages)
    only_trend = {"ease_weight": 0.0, "als_weight": 0.0, "itemknn_weight": 0.0, "repeat": 0.0,
                  "trend": 1.0}
    model = create("blend", FAST["blend"] | only_trend).fit(dated)
    assert int(np.argmax(model.score(["u0"])[0])) == lately
    blended = create("blend", FAST["blend"] | {"trend": 0.0}).fit(dated)
    assert int(np.argmax(blended.score(["u0"])[0])) < truth["half"]


def test_csr_rows_picks_rows_and_gives_unknown_ones_an_empty_row() -> None:
    matrix = sparse.random(30, 12, density=0.3, format="csr", random_state=3)
    rows = np.array([4, -1, 29, 4, 0, -1])
    picked = csr_rows(matrix, rows)
    expected = matrix[np.maximum(rows, 0)].toarray()
    expected[rows < 0] = 0.0
    assert picked.shape == (6, 12)
    np.testing.assert_array_equal(picked.toarray(), expected)
    assert csr_rows(matrix, np.zeros(0, np.int64)).shape == (0, 12)
