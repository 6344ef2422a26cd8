"""Customers' sparse histories times an offers x offers matrix, sparse or dense, into dense
scores: the products of the item-item models and EASE, for a request's one customer and a
newsletter's thousands alike.

Compiled loops (numba) instead of scipy's products: scipy's sparse x sparse builds a sparse
result nearly as dense as the scores before they become an array, and a request's one row
paid for three sparse matrices. Measured on Online Retail's blend, 1,000 customers at once and
one at a time: item neighbours 61 ms against 19, and 94 us against 22; 'follows' 53 ms against
10, and 92 us against 15; EASE 57 ms against 38, and 122 us against 58. Each score is added up
in the order scipy adds it, entry after entry of the customer's row, so the scores are
scipy's to the last bit."""

from __future__ import annotations

import numba
import numpy as np
from scipy import sparse

from training.models.base import row_owners, summed


def times(history: sparse.csr_matrix, matrix: sparse.csr_matrix | np.ndarray,
          binary: bool = False, dtype: np.dtype | type | None = None) -> np.ndarray:
    """``history @ matrix`` as a dense float32 array, a row per customer. ``binary``: each
    offer with a positive weight counts 1 and the others nothing (scipy's ``(history > 0)``,
    which adds repeated entries up first). Added up in ``dtype`` (by default the wider of the
    two, as scipy does)."""
    if not (sparse.issparse(history) and history.format == "csr"):
        history = sparse.csr_matrix(history)
    if binary:
        history = summed(history)
    if dtype is None:
        dtype = np.result_type(np.float32 if binary else history.dtype, matrix.dtype)
    scores = np.zeros((history.shape[0], matrix.shape[1]), dtype=dtype)
    data = ((history.data > 0).astype(dtype) if binary
            else history.data.astype(dtype, copy=False))
    if isinstance(matrix, np.ndarray):
        matrix = np.ascontiguousarray(matrix, dtype=dtype)
        if history.shape[0] >= BY_OFFER_ROWS and history.has_sorted_indices:
            # each customer's offers in the order of their row: the same order of adding
            by_offer = sparse.csr_matrix((data, history.indices, history.indptr),
                                         shape=history.shape).tocsc()
            _times_dense_by_offer(by_offer.indptr, by_offer.indices, by_offer.data, matrix,
                                  scores, COLUMNS_AT_ONCE)
        else:
            _times_dense(history.indptr, history.indices, data, matrix, scores)
    else:
        if matrix.format != "csr":
            matrix = sparse.csr_matrix(matrix)
        _times_sparse(history.indptr, history.indices, data, matrix.indptr, matrix.indices,
                      matrix.data.astype(dtype, copy=False), scores)
    return scores.astype(np.float32, copy=False)


def positive(history: sparse.csr_matrix) -> sparse.csr_matrix:
    """1 for each offer of a row whose weights add up to more than zero, float32: the same
    entries in the same order as scipy's ``(history > 0)``."""
    history = summed(history)
    taken = history.data > 0
    if taken.all():
        return sparse.csr_matrix((np.ones(history.nnz, dtype=np.float32), history.indices,
                                  history.indptr), shape=history.shape)
    indptr = np.zeros(history.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_owners(history)[taken], minlength=history.shape[0]),
              out=indptr[1:])
    return sparse.csr_matrix((np.ones(indptr[-1], dtype=np.float32),
                              history.indices[taken], indptr), shape=history.shape)


@numba.njit(nogil=True, cache=True)
def _times_dense(indptr, indices, data, matrix, scores):
    for row in range(len(indptr) - 1):
        out = scores[row]
        for entry in range(indptr[row], indptr[row + 1]):
            weight = data[entry]
            if weight == 0:  # adds nothing (a binary history's offer not taken)
                continue
            source = matrix[indices[entry]]
            for column in range(out.shape[0]):
                out[column] += weight * source[column]


# A batch times a dense matrix goes offer by offer, a slice of the columns at a time, so that
# each of the matrix's rows is read once a batch, not once per customer who took the offer,
# and the customers' slices of scores stay in the processor's cache (1,000 Online Retail
# customers times EASE's weights: 38 against 45 to 49 ms customer by customer)
BY_OFFER_ROWS = 16
COLUMNS_AT_ONCE = 512


@numba.njit(nogil=True, cache=True)
def _times_dense_by_offer(indptr, customers, data, matrix, scores, width):
    for first in range(0, matrix.shape[1], width):
        last = min(first + width, matrix.shape[1])
        for offer in range(len(indptr) - 1):
            source = matrix[offer, first:last]
            for entry in range(indptr[offer], indptr[offer + 1]):
                weight = data[entry]
                if weight == 0:
                    continue
                out = scores[customers[entry], first:last]
                for column in range(last - first):
                    out[column] += weight * source[column]


@numba.njit(nogil=True, cache=True)
def _times_sparse(indptr, indices, data, m_indptr, m_indices, m_data, scores):
    for row in range(len(indptr) - 1):
        out = scores[row]
        for entry in range(indptr[row], indptr[row + 1]):
            weight = data[entry]
            if weight == 0:  # adds nothing (a binary history's offer not taken)
                continue
            offer = indices[entry]
            for position in range(m_indptr[offer], m_indptr[offer + 1]):
                out[m_indices[position]] += weight * m_data[position]


class FactorScores:
    """Customers' factors times the offers' factors (``users @ offers.T``), each customer's
    row the same bits however many rows are scored at once, so that a request's one customer
    gets the scores a newsletter's batch gives them.

    A batch goes through BLAS. A lone row would take BLAS's matrix-vector kernel, whose sums
    round otherwise (up to 8e-7 with ALS on Online Retail), and as the first of two rows it
    pays for BLAS's packing of every offer's factors (130 us for 3,647 offers of 64 factors).
    It goes through a compiled loop instead (19 us) that adds each score up as the batch
    kernel does, one fused multiply-add per factor, over the offers' factors stored factor by
    factor. Where that order is not BLAS's (past its block of factors, 384 on this machine),
    a probe on the model's own factors says so and the lone row goes as the first of two."""

    def __init__(self) -> None:
        # the offers' factors the loop was prepared for, factor by factor, and the probe's say
        self._held: tuple[np.ndarray, np.ndarray, bool] | None = None

    def __call__(self, users: np.ndarray, offers: np.ndarray) -> np.ndarray:
        if users.shape[0] != 1:
            return users @ offers.T
        _, by_factor, agrees = self.prepare(offers)
        if not agrees or users.dtype != by_factor.dtype:
            return (np.vstack([users, users]) @ offers.T)[:1]
        scores = np.empty((1, offers.shape[0]), dtype=by_factor.dtype)
        _fused_row(users[0], by_factor, scores[0])
        return scores

    def prepare(self, offers: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """The offers' factors factor by factor and the probe's say, made once per matrix; a
        loaded model prepares them, so that its first request does not compile the loop
        (about a second on a machine that has no compiled copy yet)."""
        held = self._held
        if held is None or held[0] is not offers:
            by_factor = np.ascontiguousarray(offers.T)
            held = self._held = (offers, by_factor, _agrees(offers, by_factor))
        return held


def _agrees(offers: np.ndarray, by_factor: np.ndarray) -> bool:
    """Whether the compiled loop gives BLAS's batch bits for these factors (random rows)."""
    rows = np.random.default_rng(0).standard_normal((2, offers.shape[1])).astype(offers.dtype)
    batch = rows @ offers.T
    alone = np.empty_like(batch)
    for row in range(2):
        _fused_row(rows[row], by_factor, alone[row])
    return bool(np.array_equal(alone, batch))


@numba.njit(nogil=True, cache=True, fastmath={"contract"})  # fused multiply-adds, in order
def _fused_row(user, by_factor, scores):
    scores[:] = 0
    for factor in range(by_factor.shape[0]):
        weight = user[factor]
        source = by_factor[factor]
        for offer in range(scores.shape[0]):
            scores[offer] += weight * source[offer]
