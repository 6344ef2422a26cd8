"""Experiments: arms and their assignment, the store's experiments, attribution, the report's
statistics, and a live experiment driven by the response simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_client import ADMIN_AUTH, AUTH, forget_bentoml_collectors
from starlette.testclient import TestClient

from serving.attribution import Prices, attribute, outcomes
from serving.experiments import Arm, Experiment, ExperimentError, parse_arms
from serving.report import per_customer, report, sample_ratio
from serving.store import Store

T0 = datetime(2026, 7, 1, 12)


def two_arms(a: float = 50, b: float = 50, name: str = "exp") -> Experiment:
    return Experiment(name, (Arm("a", a, "m:1", "1"), Arm("b", b, "m:2", "2")), created_at=T0)


# --- arms and assignment ------------------------------------------------------------------


@pytest.mark.parametrize("arms, why", [
    ((Arm("a", 60, "m", "1"), Arm("b", 30, "m", "2")), "add up to 90"),
    ((Arm("a", 100, "m", "1"),), "at least two arms"),
    ((Arm("a", 50, "m", "1"), Arm("a", 50, "m", "2")), "names an arm twice"),
    ((Arm("a", 0, "m", "1"), Arm("b", 100, "m", "2")), "more than 0"),
    ((Arm("a b", 50, "m", "1"), Arm("b", 50, "m", "2")), "arm name 'a b'"),
])
def test_an_experiment_that_cannot_be_split_is_refused_saying_why(arms: Any, why: str
                                                                   ) -> None:
    with pytest.raises(ExperimentError, match=why):
        Experiment("exp", arms)


@pytest.mark.parametrize("text, why", [("champion", "MODEL:SHARE"),
                                       ("champion:half", "not a number")])
def test_arms_text_that_cannot_be_read_says_how_to_write_it(text: str, why: str) -> None:
    assert parse_arms("champion:50, v7:50") == [("champion", "champion", 50.0),
                                                ("v7", "v7", 50.0)]
    assert parse_arms("base=champion:30,new=champion:70") == [
        ("base", "champion", 30.0), ("new", "champion", 70.0)]
    with pytest.raises(ExperimentError, match=why):
        parse_arms(text)


def test_assignment_is_sticky_follows_the_shares_and_differs_by_salt() -> None:
    split = two_arms(20, 80)
    customers = [f"c{i}" for i in range(20_000)]
    arms = [split.arm_of(c).name for c in customers]
    assert arms == [two_arms(20, 80).arm_of(c).name for c in customers]  # any process
    assert abs(arms.count("a") / len(arms) - 0.2) < 0.015
    salted = Experiment("exp", split.arms, salt="other")
    moved = sum(a != salted.arm_of(c).name for a, c in zip(arms, customers, strict=True))
    assert moved > 4000  # another salt draws anew


def test_a_draft_starts_once_and_a_stopped_experiment_stays_stopped() -> None:
    draft = two_arms()
    running = draft.moved("running", T0)
    assert running.status == "running" and running.started_at == T0
    stopped = running.moved("stopped", T0 + timedelta(days=1))
    with pytest.raises(ExperimentError, match="only a draft starts"):
        stopped.moved("running", T0)
    with pytest.raises(ExperimentError, match="not running"):
        draft.moved("stopped", T0)


# --- the store ------------------------------------------------------------------------------


def test_the_store_keeps_experiments_and_runs_one_at_a_time(store: Store) -> None:
    store.add_experiment(two_arms(name="first"))
    store.add_experiment(two_arms(30, 70, name="second"))
    with pytest.raises(ExperimentError, match="exists already"):
        store.add_experiment(two_arms(name="first"))
    assert store.running_experiment() is None
    store.move_experiment("first", "running", T0)
    with pytest.raises(ExperimentError, match="'first' is running; stop it first"):
        store.move_experiment("second", "running", T0)
    held = store.running_experiment()
    assert held is not None and held.name == "first" and held.arms == two_arms().arms
    store.move_experiment("first", "stopped", T0 + timedelta(hours=1))
    store.move_experiment("second", "running", T0 + timedelta(hours=2))
    assert {e.name: e.status for e in store.experiments()} == {"first": "stopped",
                                                              "second": "running"}
    with pytest.raises(ExperimentError, match="no experiment 'third'"):
        store.experiment("third")


def test_a_store_made_before_the_stage_column_gets_it(tmp_path: Path) -> None:
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sqlalchemy.create_engine(url)
    with old.begin() as db:  # the decision log as the first release made it
        db.exec_driver_sql("CREATE TABLE decision_log (id INTEGER PRIMARY KEY, request_id "
                           "VARCHAR(64) NOT NULL, token VARCHAR(64), channel VARCHAR(16) NOT "
                           "NULL, endpoint VARCHAR(16) NOT NULL, experiment VARCHAR(64), arm "
                           "VARCHAR(64), model_version VARCHAR(32) NOT NULL, policy_version "
                           "VARCHAR(64) NOT NULL, decided_at DATETIME NOT NULL, offers TEXT NOT "
                           "NULL)")
    old.dispose()
    store = Store(url, "k" * 32)
    try:
        store.log_decisions([decision("c1", "r1", "a", ["p1"], T0)])
        assert store.decisions_frame("exp")["stage"].tolist() == ["active"]
    finally:
        store.close()


def test_a_store_with_the_index_of_feedback_without_the_customer_drops_it(
        tmp_path: Path) -> None:
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url, "k" * 32).close()
    old = sqlalchemy.create_engine(url)
    with old.begin() as db:
        db.exec_driver_sql("DROP INDEX feedback_once_per_customer")
        db.exec_driver_sql("CREATE UNIQUE INDEX feedback_once ON feedback (request_id, "
                           "product_id, action)")
    old.dispose()
    store = Store(url, "k" * 32)
    try:
        at = datetime(2026, 7, 1)
        click = {"request_id": "letters-1", "product_id": "p1", "action": "click",
                 "timestamp": at}
        stored = store.append_feedback([{**click, "customer_id": "c1"},
                                        {**click, "customer_id": "c2"}], at)
        assert stored.stored == 2
    finally:
        store.close()


def decision(customer: str, request: str, arm: str, products: list[str], at: datetime,
             experiment: str = "exp") -> dict[str, Any]:
    return {"request_id": request, "customer_id": customer, "channel": "web",
            "endpoint": "rank", "model_version": "1", "policy_version": "p",
            "decided_at": at, "stage": "active", "experiment": experiment, "arm": arm,
            "offers": [{"product_id": p, "position": n + 1, "score": 1.0, "priority": None,
                        "probability": 1.0} for n, p in enumerate(products)]}


# --- attribution ---------------------------------------------------------------------------

PRICES = Prices(pd.Series({"p1": 10.0, "p2": 20.0, "p3": 5.0}),
                pd.Series({"p1": 0.5, "p2": 0.25, "p3": 0.0}))


def feedback_rows(rows: list[tuple[str, str, str, str | None, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "product_id", "action", "request_id",
                                       "timestamp"])


def purchases(rows: list[tuple[str, str, int, datetime]]) -> pd.DataFrame:
    return pd.DataFrame([(c, p, "purchase", q, t) for c, p, q, t in rows],
                        columns=["customer_id", "product_id", "event_type", "quantity",
                                 "timestamp"])


def test_outcomes_go_to_the_named_list_else_the_last_one_within_the_window(
        store: Store) -> None:
    store.log_decisions([
        decision("c1", "r1", "a", ["p1", "p2"], T0),
        decision("c1", "r2", "a", ["p1"], T0 + timedelta(days=1)),
        decision("c2", "r3", "b", ["p2", "p3"], T0),
    ])
    shown = store.decisions_frame("exp")
    happened = outcomes(
        feedback_rows([
            ("c1", "p1", "click", "r1", T0 + timedelta(days=2)),  # names the older list
            ("c1", "p2", "click", None, T0 + timedelta(hours=1)),  # last touch: r1
            ("c2", "p3", "click", None, T0 - timedelta(hours=1)),  # before it was shown
            ("c1", "p1", "impression", "r2", T0 + timedelta(days=1)),  # not an outcome
        ]),
        purchases([
            ("c1", "p1", 3, T0 + timedelta(days=3)),  # last touch: r2, the later list
            ("c2", "p2", 1, T0 + timedelta(days=9)),  # outside the 7 days
        ]), store.tokens)
    credited = attribute(shown, happened, PRICES).set_index(["request_id", "product_id"])
    assert credited["clicked"].to_dict() == {("r1", "p1"): True, ("r1", "p2"): True,
                                             ("r2", "p1"): False, ("r3", "p2"): False,
                                             ("r3", "p3"): False}
    assert credited["converted"][credited["converted"]].index.tolist() == [("r2", "p1")]
    assert credited.loc[("r2", "p1"), "revenue"] == 30.0
    assert credited.loc[("r2", "p1"), "margin"] == 15.0
    wider = attribute(shown, happened, PRICES, window_days=10)
    assert wider.set_index(["request_id", "product_id"]).loc[("r3", "p2"), "converted"]


def test_a_conversion_without_a_purchase_counts_the_price_once(store: Store) -> None:
    store.log_decisions([decision("c1", "r1", "a", ["p2"], T0)])
    happened = outcomes(feedback_rows([("c1", "p2", "conversion", "r1", T0),
                                       ("c1", "p2", "conversion", "r1", T0)]),
                        purchases([]), store.tokens)
    credited = attribute(store.decisions_frame("exp"), happened, PRICES)
    assert credited["revenue"].tolist() == [20.0] and credited["converted"].tolist() == [True]


# --- the report's statistics ---------------------------------------------------------------


def synthetic(rng: np.random.Generator, n: int, rates: dict[str, float],
              shares: dict[str, float] | None = None) -> pd.DataFrame:
    """One shown offer per customer, clicked with the arm's rate."""
    arms = list(rates)
    shares = shares or {arm: 1 / len(arms) for arm in arms}
    arm = rng.choice(arms, n, p=[shares[a] for a in arms])
    clicked = rng.random(n) < np.array([rates[a] for a in arm])
    return pd.DataFrame({"token": [f"t{i}" for i in range(n)], "request_id": [
        f"r{i}" for i in range(n)], "arm": arm, "decided_at": T0, "product_id": "p1",
        "channel": "web", "stage": "active", "clicked": clicked, "converted": clicked,
        "revenue": clicked * 10.0, "margin": clicked * 2.0})


def clicks_lift(made: Any) -> dict[str, Any]:
    return next(row for row in made.lift if row["metric"] == "clicks_per_customer")


def test_identical_arms_give_intervals_covering_zero_in_95_percent_of_seeds() -> None:
    shares = {"a": 0.5, "b": 0.5}
    covered = [clicks_lift(report("aa", synthetic(np.random.default_rng(seed), 2000,
                                                  {"a": 0.1, "b": 0.1}), shares, "a", 100))
               for seed in range(300)]
    share = np.mean([row["low"] <= 0 <= row["high"] for row in covered])
    assert 0.93 <= share <= 0.98


def test_a_known_lift_is_found_with_an_interval_that_covers_it() -> None:
    made = report("ab", synthetic(np.random.default_rng(1), 8000, {"a": 0.10, "b": 0.13}),
                  {"a": 0.5, "b": 0.5}, "a", 1000)
    row = clicks_lift(made)
    assert 0 < row["low"] <= 0.03 <= row["high"]
    assert row["relative_low"] <= 0.3 <= row["relative_high"]
    assert not made.warnings
    assert [arm["customers"] for arm in made.arms] == [
        int((made_customers := per_customer(synthetic(np.random.default_rng(1), 8000, {
            "a": 0.10, "b": 0.13})))["arm"].eq(arm).sum()) for arm in ("a", "b")]
    assert len(made_customers) == 8000


def test_a_broken_split_is_flagged_as_a_sample_ratio_mismatch() -> None:
    rng = np.random.default_rng(2)
    broken = synthetic(rng, 4000, {"a": 0.1, "b": 0.1}, {"a": 0.55, "b": 0.45})
    made = report("srm", broken, {"a": 0.5, "b": 0.5}, "a", 100)
    assert made.srm["mismatch"] and made.srm["p_value"] < 0.001
    assert "sample ratio mismatch" in made.warnings[0]
    fair = sample_ratio(pd.Series({"a": 2010, "b": 1990}), {"a": 0.5, "b": 0.5})
    assert not fair["mismatch"]


def test_an_arm_under_the_minimum_sample_is_warned_about() -> None:
    made = report("small", synthetic(np.random.default_rng(3), 300, {"a": 0.1, "b": 0.1}),
                  {"a": 0.5, "b": 0.5}, "a", 1000)
    assert any("under the minimum sample of 1000" in w for w in made.warnings)
    with pytest.raises(ValueError, match="control arm 'c'"):
        report("small", synthetic(np.random.default_rng(3), 10, {"a": 0.1, "b": 0.1}),
               {"a": 0.5, "b": 0.5}, "c", 1)


# --- a live experiment ---------------------------------------------------------------------


@pytest.fixture
def experiment_env(service_env: Path, saved_model: Callable[[str, dict], Path],
                   snapshot_dir: Path, consent_url: str) -> Iterator[tuple[Store, datetime]]:
    """The service's store with a running experiment: popularity (version 2) against the
    champion (ALS, version 1), half the customers each."""
    import bentoml

    from features.settings import Settings
    from features.snapshot import load_snapshot
    from serving.experiments import ARM_MODEL_NAME
    from serving.models import import_model
    from serving.store import open_store

    popular = import_model(saved_model("popularity", {}), "2", ARM_MODEL_NAME)
    champion = str(bentoml.models.get("nbo-ranker:latest").tag)
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    store = open_store(Settings())
    store.add_experiment(Experiment("pop-vs-als", (Arm("pop", 50, popular, "2"),
                                                   Arm("als", 50, champion, "1")),
                                    created_at=now))
    store.move_experiment("pop-vs-als", "running", now)
    yield store, now
    store.close()


def test_a_better_arm_is_found_better_by_the_simulated_customers(
        experiment_env: tuple[Store, datetime], shop: Path) -> None:
    from features.generate import hidden_tastes
    from nbo.jobs.simulate import Simulator, true_lift
    from serving.service import NboService

    store, now = experiment_env
    with TestClient(NboService.to_asgi(), headers=AUTH) as http:
        done = Simulator(http, hidden_tastes(shop), seed=1).run(400, 3, now + timedelta(
            hours=1))
        admin = {"Authorization": f"Bearer {ADMIN_AUTH['X-API-Key']}"}
        made = http.get("/admin/experiments/pop-vs-als", headers=admin).json()
        listed = http.get("/admin/experiments", headers=admin).json()
        unknown = http.get("/admin/experiments/nothing", headers=admin)
        refused = http.get("/admin/experiments/pop-vs-als")  # the ranking key is not enough
    forget_bentoml_collectors()
    assert listed["serving"] == "pop-vs-als" and listed["experiments"][0]["status"] == "running"
    assert unknown.status_code == 404 and "no experiment 'nothing'" in unknown.json()["error"]
    assert refused.status_code == 401
    assert done.refused == 0 and done.lists == 1200 and done.mails > 0
    experiment = store.experiment("pop-vs-als")
    truth = true_lift(done.customers, lambda c: experiment.arm_of(c).name, "pop")["als"]
    lift = next(row for row in made["report"]["lift"]
                if row["metric"] == "clicks_per_customer")
    assert made["served_here"] and lift["arm"] == "als"
    assert 0 < lift["low"] <= truth <= lift["high"]
    assert not made["report"]["srm"]["mismatch"]
    shown = store.decisions_frame("pop-vs-als")
    versions = shown.groupby("arm")["model_version"].unique()
    assert {arm: list(v) for arm, v in versions.items()} == {"als": ["1"], "pop": ["2"]}
    by_customer = shown.groupby("token")["arm"].nunique()
    assert (by_customer == 1).all()  # sticky in every list, storefront and mail alike
    assert set(shown["endpoint"]) == {"rank", "newsletter"}


def test_the_control_group_stays_out_of_the_experiment(
        experiment_env: tuple[Store, datetime], monkeypatch: pytest.MonkeyPatch,
        people: dict[str, str]) -> None:
    from features.settings import Settings
    from serving.assignment import CONTROL, ControlGroup
    from serving.service import NboService

    monkeypatch.setenv("NBO_CONTROL_SHARE", "0.3")
    store, now = experiment_env
    settings = Settings()
    control = ControlGroup(0.3, settings.control_salt, settings.control_period)
    customers = [f"c{i:07d}" for i in range(60)]
    with TestClient(NboService.to_asgi(), headers=AUTH) as http:
        for customer in customers:
            answer = http.post("/rank", json={"customer_id": customer, "k": 5,
                                              "context": {"now": now.isoformat()}})
            assert answer.status_code == 200
    forget_bentoml_collectors()
    logged = store.decisions_frame(None)
    arms = dict(zip(logged["token"], zip(logged["experiment"], logged["arm"], strict=True),
                    strict=False))
    members = [c for c in customers if control.arm(c, now) == CONTROL]
    assert members
    for customer in customers:
        held = arms[store.token(customer)]
        if customer in members:
            assert held == ("universal-control", CONTROL)
        else:
            assert held[0] == "pop-vs-als"


def test_the_batch_newsletter_writes_each_letter_with_the_customers_arm(
        experiment_env: tuple[Store, datetime], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nbo.cli import app

    store, now = experiment_env
    customers = [f"c{i:07d}" for i in range(120)]
    pd.DataFrame({"customer_id": customers}).to_csv(tmp_path / "people.csv", index=False)
    written = CliRunner().invoke(app, ["newsletter", str(tmp_path / "people.csv"),
                                       str(tmp_path / "letters.csv"), "--now",
                                       now.isoformat()])
    assert written.exit_code == 0, written.output
    assert "pop-vs-als" in written.output
    logged = store.decisions_frame("pop-vs-als")
    assert set(logged["endpoint"]) == {"batch"} and logged["token"].nunique() > 20
    experiment = store.experiment("pop-vs-als")
    arm_of = {store.token(c): experiment.arm_of(c).name for c in customers}
    versions = {"pop": "2", "als": "1"}
    for row in logged.drop_duplicates("token").itertuples():
        assert row.arm == arm_of[row.token]
        assert row.model_version == versions[row.arm]


def test_a_policy_variant_arm_ranks_with_its_own_policy_beside_the_one_in_use(
        service_env: Path, snapshot_dir: Path) -> None:
    """Two arms of the same model: one with the policy in use, one with a variant that
    suppresses a category. The variant's customers never see the category and their lists
    are logged with its version; a new policy in use does not replace the variant."""
    import bentoml

    from features.settings import Settings
    from features.snapshot import load_snapshot
    from serving.service import NboService
    from serving.store import open_store

    champion = str(bentoml.models.get("nbo-ranker:latest").tag)
    snapshot = load_snapshot(snapshot_dir)
    now = snapshot.now.to_pydatetime()
    category = snapshot.products.set_index("product_id")["category"]
    variant = "version: no-kitchen\ncategories:\n  kitchen: {suppressed: true}\n"
    store = open_store(Settings())
    experiment = Experiment("variant", (Arm("base", 50, champion, "1"),
                                        Arm("no-kitchen", 50, champion, "1", variant)))
    store.add_experiment(experiment)
    store.move_experiment("variant", "running", now)
    admin = {"Authorization": f"Bearer {ADMIN_AUTH['X-API-Key']}"}
    customers = [f"c{i:07d}" for i in range(80)]
    seen: dict[str, set[str]] = {"base": set(), "no-kitchen": set()}
    try:
        with TestClient(NboService.to_asgi(), headers=AUTH) as http:
            assert http.put("/admin/policy", json={"version": "in-use"},
                            headers=admin).status_code == 200
            for customer in customers:
                body = http.post("/rank", json={"customer_id": customer, "k": 10, "context": {
                    "now": now.isoformat()}}).json()
                arm = experiment.arm_of(customer).name
                seen[arm] |= {category[o["product_id"]] for o in body["offers"]}
                assert body["policy_version"] == ("no-kitchen" if arm == "no-kitchen"
                                                  else "in-use")
        forget_bentoml_collectors()
        assert "kitchen" in seen["base"] and "kitchen" not in seen["no-kitchen"]
        logged = store.decisions_frame("variant").drop_duplicates("request_id")
        assert len(logged) == len(customers)
    finally:
        store.close()


@pytest.fixture(scope="module")
def two_arms_held(model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[Any, Any, Any]]:
    """A holder serving the champion and a second engine of the same model, and the store."""
    from serving.engine import Engine, PolicySettings
    from serving.models import ModelHolder

    store = Store(f"sqlite:///{tmp_path_factory.mktemp('mail') / 's.db'}", "k" * 32)
    holder = ModelHolder("nbo-ranker", store, PolicySettings())
    holder.engine = Engine.load(model_dir, "1", store, PolicySettings())
    yield holder, Engine.load(model_dir, "2", store, PolicySettings()), store
    store.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.integers(1, 99), salt=st.text("abcdef", min_size=1, max_size=6))
def test_no_arm_mails_a_customer_without_e_mail_consent(
        two_arms_held: tuple[Any, Any, Any], split: int, salt: str) -> None:
    from serving.models import Running

    holder, other, store = two_arms_held
    experiment = Experiment("mail", (Arm("a", split, "m:1", "1"),
                                     Arm("b", 100 - split, "m:2", "2")), salt=salt)
    holder.running = Running(experiment, {"a": holder.engine, "b": other}, None)
    customers = [str(c) for c in holder.engine.customers.names[:150]]
    consents = store.consents_of(customers, False)
    letters, assigned, versions = holder.letters(customers, ("profile",), T0)
    assert [letter.customer_id for letter in letters] == customers
    assert {c: a[1] for c, a in assigned.items()} == {
        c: experiment.arm_of(c).name for c in customers}
    assert {versions[c] for c in customers if assigned[c][1] == "b"} <= {"2"}
    unmailable = [letter for letter in letters
                  if not consents[letter.customer_id].allows_channel("email")]
    assert unmailable and all(not x.blocks and x.no_mail for x in unmailable)


# --- the command line ----------------------------------------------------------------------


def test_experiments_from_the_command_line(snapshot_dir: Path, isolated_home: Path) -> None:
    """Two registered versions as arms, started, stopped and reported (nothing served yet:
    the report has no customers and says so); a wrong move is a usage error."""
    import json

    from typer.testing import CliRunner

    from nbo.cli import app

    runner = CliRunner()

    def nbo(*args: str) -> Any:
        return runner.invoke(app, list(args))

    for model in ("popularity", "itemknn"):
        assert nbo("train", model, "--snapshot", str(snapshot_dir)).exit_code == 0
        if model == "popularity":
            assert nbo("promote").exit_code == 0
    made = nbo("experiment", "create", "knn-test", "--arms", "champion:40,challenger:60")
    assert made.exit_code == 0, made.output
    assert "arm champion: 40% of customers, model version 1" in made.output
    assert "arm challenger: 60% of customers, model version 2" in made.output
    assert nbo("experiment", "create", "knn-test").exit_code == 2  # the name is taken
    (isolated_home / "variant.yaml").write_text("version: v2\nvalue: price\n")
    (isolated_home / "broken.yaml").write_text("version: v3\nvalue: nonsense\n")
    variant = nbo("experiment", "create", "policy-test", "--arms",
                  "base=champion:50,priced=champion:50", "--policy",
                  f"priced={isolated_home / 'variant.yaml'}")
    assert variant.exit_code == 0, variant.output
    assert "arm priced: 50% of customers, model version 1" in variant.output
    assert "own offer policy" in variant.output.replace("\n", " ")
    assert nbo("experiment", "create", "bad-policy", "--arms", "a=champion:50,b=champion:50",
               "--policy", f"b={isolated_home / 'broken.yaml'}").exit_code == 6
    assert nbo("experiment", "create", "bad-arm", "--arms", "a=champion:50,b=champion:50",
               "--policy", f"c={isolated_home / 'variant.yaml'}").exit_code == 2
    assert nbo("experiment", "create", "bad", "--arms", "champion:40,v9:60").exit_code == 4
    assert nbo("experiment", "stop", "knn-test").exit_code == 2  # a draft
    assert nbo("experiment", "start", "knn-test").exit_code == 0
    listed = nbo("experiment", "list")
    assert "knn-test" in listed.output and "running" in listed.output
    assert nbo("experiment", "stop", "knn-test").exit_code == 0
    again = nbo("experiment", "start", "knn-test")
    assert again.exit_code == 2 and "only a draft starts" in again.output
    reported = nbo("report", "experiment", "knn-test", "--json", "--no-mlflow")
    assert reported.exit_code == 0, reported.output
    body = json.loads(reported.output)
    assert [arm["customers"] for arm in body["arms"]] == [0, 0]
    assert any("under the minimum sample" in w for w in body["warnings"])
    logged = nbo("report", "experiment", "knn-test")
    assert logged.exit_code == 0 and "under the minimum sample" in logged.output
    from training.tracking import use_tracking

    client = use_tracking(f"sqlite:///{isolated_home.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nbo-experiments")
                               .experiment_id])
    assert runs and runs[0].data.tags["nbo.experiment"] == "knn-test"
    assert nbo("report", "experiment", "nothing").exit_code == 2
    unlogged = nbo("evaluate-policy", "challenger")
    assert unlogged.exit_code == 2 and "no storefront list" in unlogged.output
    assert nbo("evaluate-policy", "v99").exit_code == 4
