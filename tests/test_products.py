"""The compiled products of the item-item models and EASE against scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from training.models import products
from training.models.products import BY_OFFER_ROWS, FactorScores, positive, times


def histories(dtype: type) -> sparse.csr_matrix:
    """Customers' rows as a caller may hand them: empty rows, negative weights, entries out
    of order and an offer stored twice in a row (a history with live events appended)."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 12, 30)
    counts[[4, 9]] = 0
    indices = np.concatenate([rng.choice(50, n, replace=False) for n in counts] + [[7, 3, 7]])
    indptr = np.concatenate([[0], np.cumsum(counts), [counts.sum() + 3]])
    data = np.concatenate([rng.uniform(-1.0, 3.0, counts.sum()), [2.0, 1.25, -0.5]])
    history = sparse.csr_matrix((data.astype(dtype), indices, indptr), shape=(31, 50))
    assert not history.has_canonical_format
    return history


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_are_scipys_to_the_last_bit(dtype: type) -> None:
    """Sparse and dense matrices, weighted and binary histories, in float32 or float64: the
    very bits of scipy's products (what the scores were before, and what the pinned
    rankings hold)."""
    rng = np.random.default_rng(11)
    history = histories(dtype)
    neighbours = sparse.random(50, 50, density=0.1, random_state=rng, format="csr",
                               dtype=np.float32)
    neighbours.data = rng.normal(size=neighbours.nnz).astype(np.float32)
    dense = rng.normal(size=(50, 1100)).astype(np.float32)  # past a slice of columns

    expected = np.asarray((history @ neighbours).todense(), dtype=np.float32)
    got = times(history, neighbours)
    assert got.dtype == np.float32 and np.abs(expected).sum() > 0
    np.testing.assert_array_equal(got, expected)

    binary = (history > 0).astype(np.float32)
    np.testing.assert_array_equal(times(history, neighbours, binary=True),
                                  np.asarray((binary @ neighbours).todense()))
    np.testing.assert_array_equal(
        times(history, dense, dtype=np.float32), history.astype(np.float32) @ dense)
    np.testing.assert_array_equal(times(history, dense, binary=True, dtype=np.float32),
                                  binary @ dense)
    np.testing.assert_array_equal(times(history, dense),
                                  np.asarray(history @ dense, dtype=np.float32))
    ordered = history.sorted_indices()  # a batch taken offer by offer, the repeat kept
    assert ordered.has_sorted_indices and ordered.shape[0] >= BY_OFFER_ROWS
    np.testing.assert_array_equal(times(ordered, dense),
                                  np.asarray(ordered @ dense, dtype=np.float32))


def test_positive_takes_what_scipy_takes_in_its_order() -> None:
    history = histories(np.float32)
    mine, scipys = positive(history), (history > 0).astype(np.float32).tocsr()
    for a, b in ((mine.indptr, scipys.indptr), (mine.indices, scipys.indices),
                 (mine.data, scipys.data)):
        np.testing.assert_array_equal(a, b)
    assert (history[30].toarray()[0, [3, 7]] == [1.25, 1.5]).all()  # added up, then tested
    assert mine[30].indices.tolist() == [3, 7]


def test_a_history_of_nothing_scores_nothing() -> None:
    empty = sparse.csr_matrix((3, 5), dtype=np.float32)
    assert not times(empty, np.ones((5, 4), np.float32)).any()
    assert times(empty, sparse.identity(5, format="csr"), binary=True).shape == (3, 5)


@pytest.mark.parametrize("factors", [1, 7, 64, 200, 512])
def test_a_lone_customers_factor_scores_are_their_batch_scores_to_the_bit(factors: int) -> None:
    """ALS's and LightFM's product: each customer scored alone gets the bits of their row in
    a batch, through the compiled loop where it adds up as BLAS does (64 factors here) and as
    the first of two rows where it does not."""
    rng = np.random.default_rng(factors)
    offers = rng.standard_normal((1500, factors)).astype(np.float32)
    users = rng.standard_normal((6, factors)).astype(np.float32)
    product = FactorScores()
    batch = product(users, offers)
    np.testing.assert_array_equal(batch, users @ offers.T)
    for row in range(len(users)):
        alone = product(users[row:row + 1], offers)
        assert alone.shape == (1, 1500) and alone.dtype == np.float32
        np.testing.assert_array_equal(alone[0], batch[row])
    if factors == 64:  # a model's usual width: the compiled loop, not BLAS's packing
        assert product._held is not None and product._held[2]


def test_a_lone_row_goes_as_the_first_of_two_where_the_loop_would_add_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(products, "_agrees", lambda offers, by_factor: False)
    rng = np.random.default_rng(3)
    offers = rng.standard_normal((700, 32)).astype(np.float32)
    users = rng.standard_normal((3, 32)).astype(np.float32)
    product = FactorScores()
    batch = product(users, offers)
    for row in range(len(users)):
        np.testing.assert_array_equal(product(users[row:row + 1], offers)[0], batch[row])


def test_new_offer_factors_are_taken_up_where_a_model_replaces_them() -> None:
    rng = np.random.default_rng(5)
    user = rng.standard_normal((1, 16)).astype(np.float32)
    product = FactorScores()
    before = rng.standard_normal((300, 16)).astype(np.float32)
    product(user, before)
    after = rng.standard_normal((300, 16)).astype(np.float32)
    np.testing.assert_array_equal(product(user, after), (np.vstack([user, user]) @ after.T)[:1])
