"""``nbo policy``: check and show the marketer's offer policy (policy.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nbo.cli.common import EXIT_MISSING, EXIT_POLICY, app, console, fail, settings, store_of

policy_app = typer.Typer(help="The offer policy: weights, values, campaigns, suppressions, "
                         "fallback offers.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

FileArgument = Annotated[Path, typer.Argument(help="The policy file (YAML).")]


def _read(path: Path) -> Any:
    from serving.offer_policy import PolicyError, load

    if not path.is_file():
        raise fail(f"{path}: no such policy file", EXIT_MISSING)
    try:
        return load(path)
    except PolicyError as exc:
        raise fail(str(exc), EXIT_POLICY) from None


@policy_app.command()
def validate(
    file: FileArgument,
    snapshot: Annotated[Path | None, typer.Option(
        help="Also check the offers and categories it names against this snapshot's "
        "catalogue.")] = None,
) -> None:
    """Check a policy file; exit 6 with every problem (field and line) if it is invalid."""
    versioned = _read(file)
    if snapshot is not None:
        import pandas as pd

        from features.contract import load_dataset
        from serving.arbitration import Arbiter
        from serving.offer_policy import PolicyError
        from serving.policy import Offers

        if not snapshot.is_dir():
            raise fail(f"{snapshot}: no such snapshot folder", EXIT_MISSING)
        products = load_dataset(snapshot).products
        offers = Offers.from_frame(products, pd.Index(products["product_id"].astype(str)))
        try:
            Arbiter(versioned, offers)
        except PolicyError as exc:
            raise fail(f"{file}: {exc}", EXIT_POLICY) from None
    console.print(f"{file}: valid, version {versioned.version}", highlight=False)


@policy_app.command()
def show(file: Annotated[Path | None, typer.Argument(
        help="A policy file; default: the policy in use in the service's store.")] = None
         ) -> None:
    """The policy with every setting resolved (defaults included), as YAML."""
    import yaml

    from serving.offer_policy import NEUTRAL, PolicyError, parse

    if file is not None:
        versioned, where = _read(file), str(file)
    else:
        held = store_of(settings()).current_policy()
        if held is None:
            versioned, where = NEUTRAL, "no policy in the store: relevance alone"
        else:
            try:
                versioned = parse(held.text, f"stored policy {held.version}")
            except PolicyError as exc:
                raise fail(str(exc), EXIT_POLICY) from None
            where = f"in use since {held.created_at:%Y-%m-%d %H:%M} UTC, from {held.source}"
    console.print(f"# version {versioned.version} ({where})", highlight=False)
    console.print(yaml.safe_dump(versioned.policy.model_dump(mode="json"), sort_keys=False),
                  highlight=False, markup=False)
