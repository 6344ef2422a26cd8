"""The ``nbo`` command line: thin glue over features, training, serving and the jobs of
:mod:`nbo.jobs`, one module per group of commands.

Exit codes: 0 success, 1 unexpected failure, 2 wrong usage, 3 the data breaks the contract,
4 an input file or folder is missing, 5 the champion gate refused a promotion, 6 the offer
policy is invalid.
"""

from __future__ import annotations

from nbo.cli import data, experiments, policy, service, training  # noqa: F401  (each registers its commands)
from nbo.cli.common import (
    EXIT_DATA,
    EXIT_MISSING,
    EXIT_NOT_PROMOTED,
    EXIT_POLICY,
    app,
    settings,
)

__all__ = ["EXIT_DATA", "EXIT_MISSING", "EXIT_NOT_PROMOTED", "EXIT_POLICY", "app", "main"]


def main() -> None:
    import os

    from features.settings import quiet_third_parties

    quiet_third_parties()
    # BentoML's model store lives with the other embedded stores unless told otherwise
    os.environ.setdefault("BENTOML_HOME", str(settings().home.resolve() / "bentoml"))
    app()
