"""Run a test on each database the store supports (the ``consent_url`` fixture)."""

import pytest

BOTH_DATABASES = pytest.mark.parametrize(
    "consent_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)],
    indirect=True)

# the erasure key of every store the tests open (NBO_ERASURE_KEY for the services they start)
ERASURE_KEY = "the-tests-erasure-key"
