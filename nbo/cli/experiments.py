"""``nbo experiment`` and ``nbo report experiment``: live experiments between registered model
versions, and what they changed."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from nbo.cli.common import (
    EXIT_MISSING,
    EXIT_POLICY,
    app,
    console,
    fail,
    print_frame,
    settings,
    store_of,
)

experiment_app = typer.Typer(help="Experiments: registered model versions served side by side "
                             "to customers assigned by a hash; at most one runs at a time.",
                             no_args_is_help=True)
report_app = typer.Typer(help="Reports of what nbo's decisions changed.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
app.add_typer(report_app, name="report")

NameArgument = Annotated[str, typer.Argument(help="The experiment's name.")]


def _store() -> Any:
    return store_of(settings())


def _now() -> datetime:
    return settings().current_time()  # type: ignore[no-any-return]


@experiment_app.command("create")
def create(
    name: NameArgument,
    arms: Annotated[str, typer.Option(
        help="Arms as MODEL:SHARE or NAME=MODEL:SHARE, comma-separated, shares adding up to "
        "100: MODEL a registered alias (champion, challenger) or version (7 or v7).")
    ] = "champion:50,challenger:50",
    policy: Annotated[list[str] | None, typer.Option(
        help="ARM=FILE: the arm ranks with this offer policy instead of the one in use (a "
        "policy variant); repeat for more arms.")] = None,
    salt: Annotated[str, typer.Option(help="Salt of the assignment hash; default: the "
                                           "name.")] = "",
    min_customers: Annotated[int, typer.Option(
        help="Customers per arm under which the report warns.")] = 1000,
) -> None:
    """Create an experiment as a draft: its arms' models are copied where the service finds
    them; 'nbo experiment start' serves it."""
    from nbo.jobs.experiments import arms_of
    from serving.experiments import Experiment, ExperimentError, check_name, parse_arms
    from serving.offer_policy import PolicyError, load
    from training.tracking import use_tracking

    try:
        check_name(name, "experiment")
        wanted = parse_arms(arms)
        variants = {}
        for pair in policy or []:
            arm_name, equals, file = pair.partition("=")
            if not equals or arm_name not in {w[0] for w in wanted}:
                raise ExperimentError(f"--policy {pair!r}: write ARM=FILE for an arm of "
                                      f"--arms ({', '.join(w[0] for w in wanted)})")
            try:
                variants[arm_name] = load(Path(file)).text
            except PolicyError as error:
                raise fail(str(error), EXIT_POLICY) from None
        served = arms_of(use_tracking(settings().tracking_uri()), wanted, variants)
        experiment = Experiment(name, tuple(served), salt, min_customers, created_at=_now())
        store = _store()
        try:
            store.add_experiment(experiment)
        finally:
            store.close()
    except ExperimentError as error:
        raise fail(str(error), 2) from None
    except LookupError as error:
        raise fail(str(error), EXIT_MISSING) from None
    for arm in experiment.arms:
        console.print(f"arm {arm.name}: {arm.share:g}% of customers, model version "
                      f"{arm.model_version} ({arm.model})"
                      + (", its own offer policy" if arm.policy else ""))
    console.print(f"created experiment {name} (a draft); start it with 'nbo experiment start "
                  f"{name}'")


def _move(name: str, status: str) -> Any:
    from serving.experiments import ExperimentError

    store = _store()
    try:
        return store.move_experiment(name, status, _now())
    except ExperimentError as error:
        raise fail(str(error), 2) from None
    finally:
        store.close()


@experiment_app.command("start")
def start(name: NameArgument) -> None:
    """Start serving an experiment: every worker and replica takes it up within
    NBO_RELOAD_SECONDS (at once through POST /admin/reload)."""
    moved = _move(name, "running")
    console.print(f"experiment {name} runs from {moved.started_at:%Y-%m-%d %H:%M:%S}")


@experiment_app.command("stop")
def stop(name: NameArgument) -> None:
    """Stop an experiment: every customer gets the champion again; the report stays."""
    moved = _move(name, "stopped")
    console.print(f"experiment {name} stopped at {moved.stopped_at:%Y-%m-%d %H:%M:%S}; "
                  f"'nbo report experiment {name}' measures it")


@experiment_app.command("list")
def list_experiments() -> None:
    """Every experiment, newest first, with its arms and status."""
    import pandas as pd

    store = _store()
    try:
        held = store.experiments()
    finally:
        store.close()
    if not held:
        console.print("no experiments yet; 'nbo experiment create NAME' makes one")
        return
    print_frame(pd.DataFrame([{
        "name": e.name, "status": e.status,
        "arms": ", ".join(f"{a.name} {a.share:g}% (v{a.model_version})" for a in e.arms),
        "started": f"{e.started_at:%Y-%m-%d %H:%M}" if e.started_at else "",
        "stopped": f"{e.stopped_at:%Y-%m-%d %H:%M}" if e.stopped_at else ""} for e in held]),
        "experiments")


@report_app.command("experiment")
def report_experiment(
    name: Annotated[str, typer.Argument(help="The experiment's name, or universal-control "
                                             "for the universal control group.")],
    control: Annotated[str | None, typer.Option(
        help="The arm the others are compared with; default: the first arm.")] = None,
    window_days: Annotated[float, typer.Option(
        help="Days after a list in which a purchase of a shown offer is credited to it.")
    ] = 7.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    mlflow: Annotated[bool, typer.Option(help="Log the report to MLflow as a run of the "
                                              "experiment nbo-experiments.")] = True,
) -> None:
    """Exposures, click and conversion rates, revenue and margin per customer, and each arm's
    lift against the control arm with 95% intervals; warns of a sample-ratio mismatch and
    of arms under the minimum sample."""
    import pandas as pd

    from nbo.jobs.experiments import log_report, served_catalogue
    from nbo.jobs.newsletter import NoServedModel
    from serving.experiments import ExperimentError
    from serving.report import experiment_report

    current = settings()
    store = store_of(current)
    try:
        prices, segments = served_catalogue(current, store)
        made = experiment_report(store, name, prices, control, current.control_share,
                                 window_days, segments).as_json()
    except NoServedModel as error:
        raise fail(str(error), EXIT_MISSING) from None
    except (ExperimentError, ValueError) as error:
        raise fail(str(error), 2) from None
    finally:
        store.close()
    if mlflow:
        from training.tracking import use_tracking

        use_tracking(current.tracking_uri())
        made["mlflow_run"] = log_report(made)
    if as_json:
        console.print_json(json.dumps(made))
        return
    print_frame(pd.DataFrame(made["arms"]), f"experiment {name}: arms")
    lift = pd.DataFrame(made["lift"])
    if len(lift):
        print_frame(lift[["arm", "metric", "treated", "control", "difference", "low", "high",
                          "p_value", "relative"]], f"lift against {made['control']} (95%)")
    srm = made["srm"]
    console.print(f"sample ratio: {srm['observed']} for shares {srm['expected_shares']}, "
                  f"p = {srm['p_value']}")
    for warning in made["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}")


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(min=1, help="Customers of the shop to simulate.")
                         ] = 500,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate: a visit per customer "
                                                  "a day.")] = 7,
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:3000",
    shop: Annotated[str | None, typer.Option(
        help="The generated shop the service learnt from (its hidden tastes); default: the "
        "demo's shop.")] = None,
    key: Annotated[str | None, typer.Option(
        help="A ranking API key; default: the first of NBO_API_KEYS.")] = None,
    start: Annotated[datetime | None, typer.Option(
        help="The first simulated day; default: now (or NBO_NOW).")] = None,
    mail_every: Annotated[int, typer.Option(min=0, help="Days between newsletters (0: "
                                                         "none).")] = 7,
    k: Annotated[int, typer.Option(min=1, max=100, help="Offers per ranking.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the customers' draws.")] = 0,
) -> None:
    """Drive a running service with simulated customers of a generated shop: they visit,
    get rankings and mails, click and buy as their hidden tastes make likely, and post the
    feedback and purchases. 'nbo report experiment' then measures what a running experiment
    changed."""

    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from features.generate import hidden_tastes
    from nbo.jobs.simulate import Simulator

    current = settings()
    folder = Path(shop) if shop else current.home / "demo" / "shop"
    api_key = key or next((k.strip() for k in current.api_keys.split(",") if k.strip()), None)
    if api_key is None:
        raise fail("no API key: pass --key or set NBO_API_KEYS ('nbo demo' prints its key)", 2)
    try:
        tastes = hidden_tastes(folder)
    except FileNotFoundError as error:
        raise fail(str(error), EXIT_MISSING) from None
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=60) as http:
        try:
            http.get("/readyz").raise_for_status()
        except httpx.HTTPError as error:
            raise fail(f"the service at {url} is not ready: {error}", 2) from None
        with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                      console=console) as progress:
            task = progress.add_task("days", total=days)
            try:
                done = Simulator(http, tastes, seed=seed).run(
                    customers, days, start or current.current_time(), k, mail_every,
                    lambda n: progress.advance(task, n))
            except (RuntimeError, httpx.HTTPError) as error:
                raise fail(str(error), 1) from None
    console.print(f"{done.lists:,} rankings and {done.mails:,} mails to "
                  f"{len(done.customers):,} customers: {done.impressions:,} impressions, "
                  f"{done.clicks:,} clicks, {done.conversions:,} purchases"
                  + (f"; {done.refused:,} calls refused" if done.refused else ""))


@app.command("evaluate-policy")
def evaluate_policy(
    challenger: Annotated[str, typer.Argument(
        help="A registered model alias (challenger) or version (7 or v7).")] = "challenger",
    days: Annotated[float, typer.Option(min=0.001, help="Days of logged lists to estimate "
                                                        "from.")] = 30.0,
    k: Annotated[int, typer.Option(min=1, max=100, help="Offers per challenger's list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")
                       ] = False,
) -> None:
    """Estimate a challenger's clicks and conversions per storefront list from the decision
    log, before it serves anyone: inverse propensity scoring and its self-normalised form,
    with 95% bootstrap intervals. Exploration (NBO_EXPLORE_SHARE) is what lets the log
    speak for offers the serving model never ranks first."""
    import tempfile

    import pandas as pd

    from nbo.jobs.offpolicy import challenger_engine, evaluate_policy
    from training.tracking import registered_folder, use_tracking

    current = settings()
    store = store_of(current)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                folder, version = registered_folder(use_tracking(current.tracking_uri()),
                                                    challenger, Path(tmp))
            except LookupError as error:
                raise fail(str(error), EXIT_MISSING) from None
            engine = challenger_engine(folder, version, current, store)
            try:
                made = evaluate_policy(engine, store, days, current.current_time(), k)
            except ValueError as error:
                raise fail(str(error), 2) from None
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps(made))
        return
    print_frame(pd.DataFrame(made["estimates"]),
                f"version {made['challenger_version']} on {made['lists']:,} logged lists")
    decay = made["position_decay"]
    console.print(f"support: {made['support']:.1%} of the challenger's offers were shown in "
                  f"the logged lists; largest weight {made['largest_weight']:.1f}; "
                  f"{made['left_out']:,} lists of customers it does not know left out; "
                  + ("too few explored clicks to correct for places" if decay is None
                     else f"attention falls as position^-{decay:.2f}"))
