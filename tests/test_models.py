"""The contract every candidate model passes, on synthetic data whose answer is known."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from model_contract import BOARD, RecommenderContract
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
    "follows": {"neighbours": 20},
    "ease": {"l2": 10.0},
    "lightfm": {"components": 8, "epochs": 30},
    "blend": {"als.factors": 3, "als.regularization": 0.1, "ease.l2": 10.0,
              "itemknn.neighbours": 20, "follows.neighbours": 20},
}
PERSONAL = [kind for kind in MODELS if kind != "popularity"]
# the blend's parts all weighed out: what is left are its terms
NO_PARTS = {"ease_weight": 0.0, "als_weight": 0.0, "itemknn_weight": 0.0, "follows_weight": 0.0}


@pytest.fixture(scope="module")
def board() -> tuple[TrainData, dict]:
    return BOARD


@pytest.fixture(scope="module")
def fitted(board: tuple[TrainData, dict]) -> dict:
    data, _ = board
    return {kind: create(kind, FAST[kind]).fit(data) for kind in MODELS}


def test_a_nested_setting_keeps_the_rest_of_its_section_as_the_model_sets_it() -> None:
    """The blend's neighbours use bm25 (not the neighbour model's own cosine default), also
    when a trial sets only their number."""
    from training.models.blend import BlendConfig

    config = create("blend", {"itemknn.neighbours": 99}).config
    assert isinstance(config, BlendConfig)
    assert config.itemknn.neighbours == 99
    assert config.itemknn.similarity == BlendConfig().itemknn.similarity == "bm25"


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
    from training.models.blend import add_own_weights

    def own_weights(history: sparse.csr_matrix) -> np.ndarray:
        weights = np.zeros(history.shape, dtype=np.float32)
        add_own_weights(weights, history, 1.0)
        return weights

    history = sparse.csr_matrix(np.array([[0.0, 4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    weights = own_weights(history)
    np.testing.assert_allclose(weights, [[0.0, 1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # a negative weight (a return) counts as none; repeated entries of a row add up
    repeated = sparse.csr_matrix((np.array([1.0, 3.0, -2.0], np.float32), np.array([2, 2, 0]),
                                  np.array([0, 3])), shape=(1, 4))
    np.testing.assert_allclose(own_weights(repeated), [[0.0, 0.0, 1.0, 0.0]])


def test_the_buy_again_term_adds_up_to_the_bit_as_numpys_dense_steps_do() -> None:
    """The buy-again term added on the history's entries alone gives the scores numpy's
    dense steps gave: the rankings stay as served."""
    from training.models.blend import add_own_weights

    rng = np.random.default_rng(8)
    total = rng.normal(size=(6, 300)).astype(np.float32)
    history = sparse.random(6, 300, density=0.05, random_state=rng, format="csr",
                            dtype=np.float32)
    history.data = rng.uniform(-1.0, 5.0, history.nnz).astype(np.float32)
    history[3] = 0  # no history
    history = sparse.vstack([history, sparse.csr_matrix(  # an offer twice; a heavy return
        (np.array([1.0, 2.5, 2.0, 0.5, -3.0], np.float32), np.array([7, 7, 8, 4, 9]),
         np.array([0, 3, 5])), shape=(2, 300))], format="csr")
    total = np.vstack([total, rng.normal(size=(2, 300)).astype(np.float32)])
    dense = np.maximum(history.toarray(), 0).astype(np.float32)
    dense *= 1.0 / np.maximum(dense.max(axis=1, keepdims=True), np.float32(1e-9))
    expected = total.copy()
    expected += 8.0 * dense
    got = total.copy()
    add_own_weights(got, history, 8.0)
    np.testing.assert_array_equal(got, expected)


def test_ease_reads_only_a_customers_history_rows(tmp_path: Path) -> None:
    """EASE keeps its weights in row order after fitting and loading: scoring a history then
    reads that history's rows, where column order copied the whole matrix on every call."""
    from training.models.base import Recommender

    data, _ = BOARD
    model = create("ease", FAST["ease"]).fit(data)
    assert model.weights.flags.c_contiguous  # type: ignore[attr-defined]
    model.weights = np.asfortranarray(model.weights)  # type: ignore[attr-defined]
    loaded = Recommender.load(model.save(tmp_path / "ease"))  # as earlier versions saved it
    weights = loaded.weights  # type: ignore[attr-defined]
    assert weights.flags.c_contiguous and weights.dtype == np.float32


@pytest.mark.parametrize("kind", ["ease", "itemknn", "follows", "als", "lightfm", "blend"])
def test_a_customers_scores_alone_are_their_scores_in_a_batch(fitted: dict, kind: str) -> None:
    """A request's one customer scores to the last bit what a batch gives them (the
    newsletter's batch and /rank must agree), with repeated entries too."""
    model = fitted[kind]
    offers = len(model.items)
    rng = np.random.default_rng(3)
    history = sparse.random(40, offers, density=0.5, random_state=rng, dtype=np.float32,
                            format="csr")
    history.data = rng.uniform(0.1, 3.0, history.nnz).astype(np.float32)
    rows = np.full(40, -1)
    batch = model.raw_scores(rows, history)
    alone = np.vstack([model.raw_scores(rows[:1], history[i]) for i in range(40)])
    assert np.array_equal(alone, batch) and np.abs(batch).sum() > 0
    # an offer twice in a history (scipy adds such entries up first where it compares)
    repeated = sparse.csr_matrix((np.array([1.0, 2.0, -1.5, 1.0], np.float32),
                                  np.array([3, 1, 3, 2]), np.array([0, 3, 4])),
                                 shape=(2, offers))
    np.testing.assert_array_equal(model.raw_scores(rows[:1], repeated[:1]),
                                  model.raw_scores(rows[:2], repeated)[:1])


@pytest.mark.parametrize("kind", ["als", "lightfm"])
def test_a_loaded_factor_model_has_its_one_row_product_ready(fitted: dict, kind: str,
                                                             tmp_path: Path) -> None:
    """Loading prepares the offers' factors for a request's one row, so a served model's first
    request does not compile the loop."""
    from training.models.base import Recommender

    loaded = Recommender.load(fitted[kind].save(tmp_path / kind))
    held = loaded._product._held
    offers = loaded.item_factors if kind == "als" else loaded.item_vectors
    assert held is not None and held[0] is offers and held[2]


def test_als_folds_a_history_in_on_one_thread(tmp_path: Path) -> None:
    """A request's fold-in starts no OpenMP team: with a serving worker per core, teams on
    every core waited on each other. Fitted or loaded, and the answer is the fitted one's."""
    from training.models.base import Recommender
    from training.models.factorization import FOLD_IN_THREADS

    data, _ = BOARD
    model = create("als", FAST["als"]).fit(data)
    loaded = Recommender.load(model.save(tmp_path / "als"))
    history = csr_rows(data.matrix, np.array([0, 1]))
    folded = loaded._fold_in(history)  # type: ignore[attr-defined]
    np.testing.assert_allclose(folded, model._fold_in(history), rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]
    assert FOLD_IN_THREADS == 1
    for fitted in (model, loaded):
        assert fitted._solver.num_threads == FOLD_IN_THREADS  # type: ignore[attr-defined]


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
    only_trend = NO_PARTS | {"repeat": 0.0, "trend": 1.0, "rising": 0.0}
    model = create("blend", FAST["blend"] | only_trend).fit(dated)
    assert int(np.argmax(model.score(["u0"])[0])) == lately
    blended = create("blend", FAST["blend"] | {"trend": 0.0}).fit(dated)
    assert int(np.argmax(blended.score(["u0"])[0])) < truth["half"]


def test_an_offer_sells_since_its_oldest_customers_last_event() -> None:
    matrix = sparse.csr_matrix(np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]]))
    ages = matrix.copy()
    ages.data = np.array([3.0, 40.0, 90.0, np.inf])  # row by row
    empty = pd.DataFrame(index=pd.Index(["a", "b"]))
    data = TrainData(IdMap(["a", "b"]), IdMap(["w", "x", "y", "z"]), matrix, empty, empty, ages)
    np.testing.assert_array_equal(data.selling_days(), [90.0, 40.0, np.inf, np.inf])
    undated = TrainData(data.customers, data.items, matrix, empty, empty)
    assert np.isinf(undated.selling_days()).all()


def test_blend_newness_puts_what_is_new_and_selling_first(board: tuple) -> None:
    """Two offers every customer of the board took yesterday: the one that began selling
    then tops the ranking; the one whose oldest customer took it half a year ago is old
    stock bought again, and newness leaves it where every old offer is."""
    data, truth = board
    ages = data.ages.copy()
    ages.data[:] = 180.0
    new, revived = int(truth["half"]) + 3, int(truth["half"]) + 5  # in the second block
    ages.data[ages.indices == new] = 1.0
    again = np.flatnonzero(ages.indices == revived)
    ages.data[again] = 1.0
    ages.data[again[0]] = 180.0
    dated = TrainData(data.customers, data.items, data.matrix, data.customer_features,
                      data.item_features, ages)
    only_newness = NO_PARTS | {"repeat": 0.0, "trend": 0.0, "newness": 1.0,
                               "newness_days": 30.0, "rising": 0.0}
    model = create("blend", FAST["blend"] | only_newness).fit(dated)
    scores = model.score(["u0"])[0]
    assert int(np.argmax(scores)) == new
    old = np.delete(np.arange(len(scores)), new)
    assert np.ptp(scores[old]) == 0.0  # the revived offer among them
    blended = create("blend", FAST["blend"] | {"newness": 0.0}).fit(dated)
    assert int(np.argmax(blended.score(["u0"])[0])) < truth["half"]
    # in a history of 180 days, newness asks for at least 179 of them before the first sale
    for quiet, top in ((179.0, new), (179.5, None)):
        scores = create("blend", FAST["blend"] | only_newness | {"newness_quiet_days": quiet}
                        ).fit(dated).score(["u0"])[0]
        assert (int(np.argmax(scores)) == top) if top is not None else np.ptp(scores) == 0.0


@pytest.mark.parametrize("width", [5, 128, 257, 3647])
def test_standardised_rows_are_numpys_centred_rows_over_their_spread(width: int) -> None:
    """To the bit, rows shorter and longer than numpy's pairwise blocks: the rankings stay
    as served. Added into a total, as the blend adds its parts, too."""
    from training.models.blend import add_standardised, standardised

    rng = np.random.default_rng(width)
    rows = (rng.gamma(0.5, 3.0, (6, width)) * 10.0 ** rng.uniform(-3, 3, (6, 1))
            ).astype(np.float32)
    rows[2] = 4.0  # no spread: all zero
    expected = (rows - rows.mean(axis=1, keepdims=True)) / np.maximum(
        rows.std(axis=1, keepdims=True), 1e-9)
    got = standardised(rows)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert not got[2].any()
    wide = rows.astype(np.float64)  # the fit's terms
    np.testing.assert_array_equal(standardised(wide), (wide - wide.mean(axis=1, keepdims=True))
                                  / np.maximum(wide.std(axis=1, keepdims=True), 1e-9))
    total = rng.normal(size=rows.shape).astype(np.float32)
    expected_total = total + 0.37 * expected
    add_standardised(total, rows, 0.37)
    np.testing.assert_array_equal(total, expected_total)


def took(visits: dict[str, dict[str, float]], offers: int) -> TrainData:
    """Training data of customers' offers ``o0``.. with the days since they took each."""
    customers, items = IdMap(list(visits)), IdMap([f"o{i}" for i in range(offers)])
    rows = [r for r, taken in enumerate(visits.values()) for _ in taken]
    cols = [int(o[1:]) for taken in visits.values() for o in taken]
    days = [d for taken in visits.values() for d in taken.values()]
    shape = (len(customers), offers)
    matrix = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    ages = sparse.csr_matrix((np.asarray(days, np.float32), (rows, cols)), shape=shape)
    unknown = dict.fromkeys(("region", "age_band", "lifecycle_stage", "segment"), "unknown")
    about = dict.fromkeys(("category", "brand", "price_band", "offer_type"), "unknown")
    return TrainData(customers, items, matrix, pd.DataFrame(unknown, index=customers.ids),
                     pd.DataFrame(about, index=items.ids), ages)


def test_an_offer_follows_another_that_its_customers_took_on_an_earlier_visit() -> None:
    """o1 came a month after o0 for three customers; o2 was in o0's basket; o3 came a year
    later; o4 came after o0 as o1 did but is bought by many more."""
    later = {f"c{c}": {"o0": 40.0, "o1": 10.0, "o2": 40.0, "o4": 10.0} for c in range(3)}
    late = {"c3": {"o0": 400.0, "o3": 35.0}, "c4": {"o0": 400.0, "o3": 35.0}}
    crowd = {f"p{c}": {"o4": 5.0} for c in range(12)}
    model = create("follows", {"gap_days": 7.0, "half_life_days": 90.0, "damping": 0.7}).fit(
        took(later | late | crowd, 5))
    follows = model.similarity.toarray()  # type: ignore[attr-defined]
    assert follows[0, 1] > 0 and follows[1, 0] == 0  # directed: o0 leads to o1, not back
    assert follows[0, 2] == follows[2, 0] == 0  # the same visit: nothing follows
    assert follows[0, 1] > follows[0, 3] > 0  # a year after counts less than a month after
    assert follows[0, 1] > follows[0, 4] > 0  # as often, but o4 everyone buys anyway
    scores = model.score(["c3"])[0]  # who took o0 and o3: o1 before the popular o4
    assert scores[1] > scores[4] > scores[2]
    undated = took(later | late | crowd, 5)
    undated.ages = None  # no dates: plain co-purchase, both ways, o2 with o0 too
    plain = create("follows").fit(undated).similarity.toarray()  # type: ignore[attr-defined]
    assert plain[0, 2] > 0 and plain[2, 0] > 0 and plain[0, 1] > 0 and plain[1, 0] > 0


def test_follows_counts_each_customers_latest_offers_in_chunks_as_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from training.models import neighbours
    from training.models.neighbours import following

    rng = np.random.default_rng(3)
    visits = {f"c{c}": {f"o{o}": float(rng.integers(0, 300))
                        for o in rng.choice(30, int(rng.integers(1, 25)), replace=False)}
              for c in range(60)}
    ages = took(visits, 30).ages
    assert ages is not None
    whole = following(ages, 7.0, 90.0, 1_000)
    monkeypatch.setattr(neighbours, "PAIRS_AT_ONCE", 50)  # a customer or two per chunk
    np.testing.assert_allclose(following(ages, 7.0, 90.0, 1_000).toarray(), whole.toarray(),
                               rtol=1e-6)
    expected = np.zeros((30, 30))
    for taken in visits.values():
        latest = sorted(taken.items(), key=lambda pair: (pair[1], int(pair[0][1:])))[:10]
        for first, before in latest:
            for then, after in latest:
                if before - after >= 7.0:
                    expected[int(first[1:]), int(then[1:])] += 2.0 ** (-(before - after) / 90)
    np.testing.assert_allclose(following(ages, 7.0, 90.0, 10).toarray(), expected, rtol=1e-5)


def test_the_blend_lifts_what_follows_the_customers_offers() -> None:
    later = {f"c{c}": {"o0": 40.0, "o1": 10.0} for c in range(4)}
    others = {f"d{c}": {"o2": 40.0, "o3": 20.0} for c in range(4)}
    data = took(later | others | {"new": {"o0": 3.0}}, 6)
    scores = {weight: create("blend", FAST["blend"] | NO_PARTS | {"follows_weight": weight})
              .fit(data).score(["new"])[0] for weight in (0.0, 1.0)}
    assert scores[1.0][1] - scores[1.0][3] > scores[0.0][1] - scores[0.0][3]


def test_an_offer_rises_by_how_much_faster_its_customers_came_lately() -> None:
    from training.models.blend import rising

    recent = np.array([10.0, 10.0, 10.0, 1.0, 0.0])
    base = np.array([12.0, 60.0, 200.0, 1.0, 5.0])  # the same half-lives for all
    rise = rising(recent, base, 7.0, 90.0)[0]
    assert rise[0] > rise[1] > 0.0  # more of its customers were lately: faster lately
    assert rise[2] == 0.0 and rise[4] == 0.0  # slower lately than over the longer run
    assert 0.0 < rise[3] < rise[0] / 4  # one customer, even a first, is a small surge


def test_blend_rising_puts_what_sells_faster_first_to_those_it_suits(board: tuple) -> None:
    """Every offer of the board has the same number of buyers; the one all of them took
    yesterday (and the others two months ago) tops the ranking of rising alone, and in the
    blend it gains more for a customer of its block than for one of the other block."""
    data, truth = board
    ages = data.ages.copy()
    ages.data[:] = 60.0
    lately = int(truth["half"]) + 3  # in the second block, where u1 buys
    ages.data[ages.indices == lately] = 1.0
    dated = TrainData(data.customers, data.items, data.matrix, data.customer_features,
                      data.item_features, ages)
    only_rising = NO_PARTS | {"repeat": 0.0, "trend": 0.0, "newness": 0.0, "rising": 1.0}
    model = create("blend", FAST["blend"] | only_rising).fit(dated)
    scores = model.score(["u0", "u1"])
    assert (np.argmax(scores, axis=1) == lately).all()
    np.testing.assert_array_equal(scores[0], scores[1])  # nothing personal to suit
    blended = create("blend", FAST["blend"] | {"trend": 0.0, "newness": 0.0}).fit(dated)
    with_rising = blended.score(["u0", "u1"])[:, lately]
    blended.config = blended.config.model_copy(update={"rising": 0.0})
    gained = with_rising - blended.score(["u0", "u1"])[:, lately]
    assert gained[1] > 2 * gained[0] > 0.0


def test_csr_rows_picks_rows_and_gives_unknown_ones_an_empty_row() -> None:
    matrix = sparse.random(30, 12, density=0.3, format="csr", random_state=3)
    rows = np.array([4, -1, 29, 4, 0, -1])
    picked = csr_rows(matrix, rows)
    expected = matrix[np.maximum(rows, 0)].toarray()
    expected[rows < 0] = 0.0
    assert picked.shape == (6, 12)
    np.testing.assert_array_equal(picked.toarray(), expected)
    assert csr_rows(matrix, np.zeros(0, np.int64)).shape == (0, 12)
    for i, row in enumerate(rows.tolist()):  # one row alone: the same entries
        alone = csr_rows(matrix, np.array([row]))
        assert alone.shape == (1, 12) and alone.nnz == picked[i].nnz
        np.testing.assert_array_equal(alone.toarray(), expected[i:i + 1])


class TestPopularity(RecommenderContract):
    kind, params, personal = "popularity", FAST["popularity"], False


class TestPopularityBySegment(RecommenderContract):
    kind, params, personal = "popularity", {"by": "segment"}, False


class TestALS(RecommenderContract):
    kind, params = "als", FAST["als"]


class TestBPR(RecommenderContract):
    kind, params = "bpr", FAST["bpr"]


class TestItemKNN(RecommenderContract):
    kind, params = "itemknn", FAST["itemknn"]


class TestFollows(RecommenderContract):
    kind, params = "follows", FAST["follows"]


class TestEASE(RecommenderContract):
    kind, params = "ease", FAST["ease"]


class TestLightFM(RecommenderContract):
    kind, params = "lightfm", FAST["lightfm"]


class TestBlend(RecommenderContract):
    kind, params = "blend", FAST["blend"]


def test_every_model_has_a_contract_class() -> None:
    tested = {cls.kind for cls in RecommenderContract.__subclasses__()}
    assert tested == set(MODELS)


def test_the_blend_gives_eases_weight_to_neighbours_past_its_catalogue_limit(
        tmp_path: Path) -> None:
    """A catalogue past ease_max_offers (or this machine's memory) is fitted without EASE:
    item neighbours take its weight, and the saved model says so."""
    from training.models.base import Recommender

    data, _ = BOARD
    offers = data.matrix.shape[1]
    whole = create("blend", {"ease_max_offers": offers}).fit(data)
    assert set(whole.parts) == {"ease", "als", "itemknn", "follows"}
    cut = create("blend", {"ease_max_offers": offers - 1}).fit(data)
    assert set(cut.parts) == {"als", "itemknn", "follows"}
    assert (cut.config.ease_weight, cut.config.itemknn_weight) == (
        0.0, whole.config.itemknn_weight + whole.config.ease_weight)
    loaded = Recommender.load(cut.save(tmp_path / "cut"))
    assert set(loaded.parts) == {"als", "itemknn", "follows"}
    np.testing.assert_allclose(loaded.score(["u1", "u2"]), cut.score(["u1", "u2"]), rtol=1e-6)
    assert not np.allclose(cut.score(["u1"]), whole.score(["u1"]))


def test_ease_fits_what_this_machines_memory_holds() -> None:
    from training.models.neighbours import PEAK_BYTES_PER_PAIR, ease_fits

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    largest = int((0.6 * memory / PEAK_BYTES_PER_PAIR) ** 0.5)
    assert ease_fits(largest) and not ease_fits(largest + 100)
    assert create("blend", {}).ease_fits(5_000)  # type: ignore[attr-defined]
    assert not create("blend", {}).ease_fits(40_000)  # type: ignore[attr-defined]


def test_a_reasons_anchor_is_the_first_most_similar_other_offer_where_that_is_positive(
        ) -> None:
    from training.models.base import _most_similar

    rng = np.random.default_rng(5)
    for _ in range(2000):
        counts = rng.integers(0, 6, int(rng.integers(1, 8)))
        targets = np.repeat(rng.integers(0, 5, len(counts)), counts)
        anchors = rng.integers(0, 5, int(counts.sum()))
        similarity = rng.integers(-2, 3, len(anchors)).astype(float)  # ties
        for share, value in ((0.1, np.nan), (0.1, np.inf), (0.1, -np.inf)):
            similarity[rng.random(len(anchors)) < share] = value
        expected, start = [], 0
        for count in counts.tolist():
            pairs = [p for p in range(start, start + count) if anchors[p] != targets[p]]
            values = [similarity[p] for p in pairs]
            start += count
            if not pairs or any(np.isnan(values)) or not 0 < max(values) < np.inf:
                expected.append(-1)  # a NaN among the others: no anchor
                continue
            expected.append(pairs[values.index(max(values))])
        assert _most_similar(counts, targets, anchors, similarity).tolist() == expected
        assert _most_similar(counts, targets, anchors, similarity.astype(np.float32)
                             ).tolist() == expected
