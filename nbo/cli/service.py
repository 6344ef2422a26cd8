"""Service commands: the demo, serve, build a Bento, and the newsletter batch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn

from features.settings import redacted
from nbo.cli.common import (
    EXIT_DATA,
    EXIT_MISSING,
    EXIT_NOT_PROMOTED,
    app,
    check_engine,
    console,
    dask_cluster,
    fail,
    print_frame,
    settings,
    steps,
    store_of,
)

# --- demo ---------------------------------------------------------------------------------


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=50, help="Customers in the generated shop.")
                         ] = 2_000,
    seed: Annotated[int, typer.Option(help="Random seed of the shop.")] = 42,
    port: Annotated[int, typer.Option(help="Port of the demo service.")] = 3000,
    stop: Annotated[bool, typer.Option(help="Only stop a demo service started before.")
                    ] = False,
) -> None:
    """The main job on embedded defaults: generate a shop, validate it, build features,
    compare the candidate models, register the best in MLflow, promote it, and start the
    service with fresh API keys, leaving it running. The demo is a workspace of its own,
    NBO_HOME/demo (default .nbo/demo): its MLflow, Optuna, store and BentoML model store
    never meet the models of another dataset trained in NBO_HOME. Exit 5 if its champion
    gate refuses the new model."""
    import pandas as pd
    from rich.table import Table

    from nbo.cli.data import build_features, generate_shop, print_snapshot
    from nbo.jobs.demo import use_demo_workspace

    home = use_demo_workspace()
    if stop:
        from nbo.jobs.demo import stop_demo_service

        stopped = stop_demo_service(home.resolve())
        console.print("stopped the demo service" if stopped else "no demo service was running")
        return
    shop, snapshot = home / "shop", home / "snapshot"
    console.rule("nbo demo")
    counts = generate_shop(shop, customers, seed, datetime(2026, 6, 30), "parquet")
    console.print(f"1. generated shop in {shop}: "
                  + ", ".join(f"{n:,} {name}" for name, n in counts.items()))
    from features.config import FeatureConfig

    manifest = build_features(shop, snapshot, FeatureConfig(), None, None)
    console.print("2. validated the shop and built features")
    print_snapshot(manifest, snapshot)
    segments = pd.read_parquet(snapshot / "segments.parquet")
    table = Table(title="Segments")
    for column in ("segment", "customers", "median_orders", "median_value", "top_categories"):
        table.add_column(column)
    for row in segments.itertuples():
        table.add_row(str(row.segment), f"{row.customers:,}", f"{row.median_orders:.0f}",
                      f"{row.median_value:,.0f}", str(row.top_categories))
    console.print(table)
    _demo_models(snapshot)
    _demo_service(snapshot, port)


def _demo_models(snapshot: Path) -> None:
    from nbo.cli.training import experiment_of, tracking
    from nbo.jobs.champion import publish_champion
    from training.pipeline import compare_candidates, train
    from training.tracking import promote as run_promotion
    from training.tune import OBJECTIVE, balanced

    experiment = experiment_of(snapshot, None, 30.0, 10)
    client = tracking()
    with steps("comparing candidate models") as step:
        table = compare_candidates(experiment, report=step, log=True)
    wide = table.pivot(index="model", columns="task", values="ndcg")
    wide["objective"] = balanced(wide[[name.split(".")[0] for name in OBJECTIVE]].to_numpy())
    wide["fit_s"] = table.groupby("model")["fit_s"].first()
    wide = wide.sort_values("objective", ascending=False).reset_index()
    console.print("3. compared the candidates on the last 30 days (NDCG@10)")
    print_frame(wide, "candidates")
    best = str(wide["model"].iloc[0])
    with steps(f"training {best}") as step:
        trained = train(experiment, best, report=step)
    logged = trained.logged
    assert logged is not None
    console.print(f"4. registered {best} as nbo-ranker version {logged.version} (MLflow at "
                  f"{redacted(settings().tracking_uri())})")
    decision = run_promotion(client)
    console.print(f"5. {decision.message}")
    if not decision.promoted:
        raise fail("the demo's champion gate kept its champion; the service was not "
                   "started with a model it did not choose", EXIT_NOT_PROMOTED)
    console.print(f"6. published the champion to BentoML's model store as "
                  f"{publish_champion(client)}")


def _demo_service(snapshot: Path, port: int) -> None:
    """Start the service in the background with fresh keys and show a ranking from it."""
    import json

    import httpx

    from nbo.jobs.demo import POLICY, PortInUse, demo_customer, start_demo_service

    try:
        service = start_demo_service(settings().home.resolve(), snapshot, port)
    except PortInUse as error:
        raise fail(str(error), 2) from None
    except RuntimeError as error:
        raise fail(str(error), 1) from None
    customer, url = demo_customer(snapshot), service.url
    auth = {"Authorization": f"Bearer {service.api_key}"}
    ranking = httpx.post(f"{url}/rank", json={"customer_id": customer, "k": 5}, headers=auth,
                         timeout=10).json()
    console.print(f"7. the service runs at {url} (pid {service.pid}, log {service.log}, 'now' "
                  f"pinned to {service.now}); {customer} is {ranking['lifecycle_stage']}:")
    print_frame(_offers_frame(ranking["offers"]), f"POST /rank for {customer}")
    lapsed = demo_customer(snapshot, "lapsed")
    explained = httpx.post(f"{url}/rank", json={"customer_id": lapsed, "k": 5,
                                                "explain": True},
                           headers=auth, timeout=10).json()
    console.print(f"8. with the offer policy {explained['policy_version']} ({POLICY.name}), "
                  f"priority = propensity^a * value^b * weight * context weight; "
                  f"for {lapsed}, who is {explained['lifecycle_stage']}:", highlight=False)
    print_frame(_explained_frame(explained["offers"]), f"POST /rank for {lapsed}, explained",
                floats="{:.4g}")
    rank_body = json.dumps({"customer_id": lapsed, "k": 5, "explain": True})
    letter_body = json.dumps({"customers": [customer]})
    console.print("Try it:", highlight=False)
    for path, body in (("rank", rank_body), ("newsletter", letter_body)):
        console.print(f"  curl -s -X POST {url}/{path} -H 'Authorization: Bearer "
                      f"{service.api_key}' -H 'Content-Type: application/json' "
                      f"-d '{body}'", highlight=False, soft_wrap=True)
    console.print(f"  admin key (PUT /consents/..., DELETE /customers/...): "
                  f"{service.admin_key}", highlight=False, soft_wrap=True)
    console.print(f"Stop it with: kill {service.pid}   (or: nbo demo --stop)", highlight=False)
    console.print(f"The demo's workspace is {settings().home}: set NBO_HOME={settings().home} "
                  "for the other commands to work with its models.", highlight=False,
                  soft_wrap=True)


def _offers_frame(offers: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(offers, columns=["rank", "product_id", "title", "score", "reason"])


def _explained_frame(offers: list[dict[str, Any]]) -> Any:
    import pandas as pd

    rows = [{"rank": o["rank"], "product_id": o["product_id"], "priority": o["priority"],
             **o["components"]} for o in offers]
    return pd.DataFrame(rows)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start the ranking service (bentoml serve serving.service:NboService) in the
    foreground with NBO_WORKERS worker processes (default: one per core); it needs
    NBO_API_KEYS and NBO_ADMIN_API_KEYS and a promoted model."""
    import os
    import sys

    from serving.process import SERVICE

    current = settings()
    if not current.api_keys.strip() or not current.admin_api_keys.strip():
        raise fail("set NBO_API_KEYS and NBO_ADMIN_API_KEYS (comma-separated keys) first", 2)
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve",
                              SERVICE, "--port", str(port), "--host", host])


@app.command()
def build(
    export: Annotated[Path | None, typer.Option(
        help="Also write the Bento, model included, to this file (e.g. nbo.bento); "
             "'bentoml import FILE' restores it on another machine.")] = None,
) -> None:
    """Package the service with the promoted champion into a Bento (bentoml build from
    bentofile.yaml); serve it with 'bentoml serve nbo:latest'."""
    from serving.models import build_bento

    try:
        built = build_bento(Path(__file__).resolve().parents[2], settings().model_tag, export)
    except (FileNotFoundError, LookupError) as error:
        raise fail(str(error), 2) from None
    console.print(f"built Bento {built.bento} with model {', '.join(built.models)}")
    if built.exported:
        console.print(f"exported to {built.exported}")


@app.command()
def newsletter(
    customers: Annotated[Path, typer.Argument(help="Parquet or CSV file with a customer_id "
                                                   "column.")],
    out: Annotated[Path, typer.Argument(help="File to write (.parquet or .csv).")],
    blocks: Annotated[str, typer.Option(help="Comma-separated blocks, in order.")
                      ] = "profile,lifecycle,last_visit,regional",
    now: Annotated[datetime | None, typer.Option(help="Moment of the mailing; default: now "
                                                      "(or NBO_NOW).")] = None,
    engine_name: Annotated[str, typer.Option(
        "--engine", help="pandas (this process) or dask (partitions of customers on a Dask "
        "cluster, the model loaded once per worker).")] = "pandas",
    scheduler: Annotated[str | None, typer.Option(
        help="Dask engine: address of a running scheduler, e.g. tcp://host:8786.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Dask engine without --scheduler: local worker processes; default: cores.")
    ] = None,
    partition_size: Annotated[int, typer.Option(
        min=1, help="Dask engine: customers per partition.")] = 20_000,
) -> None:
    """Write the newsletter blocks of every customer of a file for an e-mail tool: one row per
    block, or one row with the reason a customer gets no personalised mail. With --engine dask
    the workers of a Dask cluster write the letters (a local cluster unless --scheduler names
    one); each worker needs the model in its BentoML store and the service's store."""
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from nbo.jobs.newsletter import NoServedModel, customer_ids, letters_table, served_holder
    from serving.decision_log import DecisionLog
    from serving.newsletter import BLOCKS

    check_engine(engine_name, {"--scheduler": scheduler, "--workers": workers})
    if not customers.exists():
        raise fail(f"{customers} does not exist", EXIT_MISSING)
    frame = (pd.read_parquet(customers) if customers.suffix == ".parquet"
             else pd.read_csv(customers, dtype=str))
    if "customer_id" not in frame:
        raise fail(f"{customers} has no customer_id column (columns: {list(frame.columns)})",
                   EXIT_DATA)
    if out.suffix not in (".parquet", ".csv"):
        raise fail(f"{out}: write .parquet or .csv", 2)
    chosen = tuple(b.strip() for b in blocks.split(",") if b.strip())
    unknown = [b for b in chosen if b not in BLOCKS]
    if unknown or not chosen:
        raise fail(f"unknown block(s) {unknown}; choose from {', '.join(BLOCKS)}", 2)
    current = settings()
    store = store_of(current)
    decisions = DecisionLog(store, current.decision_log_days, current.current_time)
    try:
        try:
            holder = served_holder(current, store)
        except NoServedModel as error:
            raise fail(str(error), EXIT_MISSING) from None
        engine = holder.engine
        if engine is None:  # served_holder refuses to return one without
            raise fail("no model is served", EXIT_MISSING)
        ids = customer_ids(frame)
        moment = now or current.current_time()
        with Progress(TextColumn("newsletter"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("customers", total=len(ids))

            def advance(done: int) -> None:
                progress.advance(task, done)

            if engine_name == "pandas":
                table = letters_table(holder, ids, chosen, moment, advance, decisions)
            else:
                table = dask_letters(current, ids, chosen, moment, scheduler, workers,
                                     partition_size, advance)
    finally:
        decisions.close()
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False) if out.suffix == ".parquet" else table.to_csv(out,
                                                                                    index=False)
    mailed = table.loc[table["no_mail"].isna(), "customer_id"].nunique()
    total = table["customer_id"].nunique()
    arms = (f"; experiment {holder.status.experiment}: each customer's arm wrote their letter"
            if holder.status.experiment else "")
    console.print(f"wrote {out}: {mailed:,} of {total:,} customers get a personalised mail "
                  f"(model version {engine.version}{arms})")


def dask_letters(current: Any, ids: list[str], blocks: tuple[str, ...], moment: datetime,
                 scheduler: str | None, workers: int | None, partition_size: int,
                 advance: Callable[[int], None]) -> Any:
    from nbo.jobs.newsletter_dask import letters_on_dask

    with dask_cluster(scheduler, workers) as client:
        return letters_on_dask(client, current, ids, blocks, moment, partition_size, advance)
