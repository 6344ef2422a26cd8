"""Off-policy estimates: IPS and SNIPS from logged lists whose choice probabilities are
known, against the value a target policy truly has."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.offpolicy import estimate

N_OFFERS, K = 30, 5
THETA = np.linspace(0.02, 0.3, N_OFFERS)  # each offer's click probability
TARGET = np.argsort(-THETA)[:K]  # the challenger shows the best five
TRUTH = THETA[TARGET].sum()  # its expected clicks per list


def logged_lists(seed: int, lists: int = 3000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A logging policy that shows five offers drawn uniformly (each with probability
    5/30), the customers' clicks on them, and the challenger's list for every request."""
    rng = np.random.default_rng(seed)
    shown = np.vstack([rng.choice(N_OFFERS, K, replace=False) for _ in range(lists)])
    clicked = rng.random(shown.shape) < THETA[shown]
    request = np.repeat([f"r{i}" for i in range(lists)], K)
    logged = pd.DataFrame({"request_id": request, "product_id": [f"p{i}" for i in
                                                                 shown.ravel()],
                           "probability": K / N_OFFERS, "clicked": clicked.ravel(),
                           "converted": clicked.ravel() & (rng.random(shown.size) < 0.5)})
    challenger = pd.DataFrame({"request_id": np.repeat([f"r{i}" for i in range(lists)], K),
                               "product_id": np.tile([f"p{i}" for i in TARGET], lists)})
    return logged, challenger


def test_ips_and_snips_find_the_challengers_value_within_their_intervals() -> None:
    covered = {"ips": 0, "snips": 0}
    means = {"ips": [], "snips": []}
    seeds = 60
    for seed in range(seeds):
        logged, challenger = logged_lists(seed)
        clicks, _ = estimate(logged, challenger, seed=seed, resamples=400)[0]
        for kind in covered:
            low, high = getattr(clicks, f"{kind}_low"), getattr(clicks, f"{kind}_high")
            covered[kind] += low <= TRUTH <= high
            means[kind].append(getattr(clicks, kind))
        assert clicks.logged < TRUTH  # the logging policy earns less than the challenger
    for kind in covered:
        assert covered[kind] / seeds >= 0.85, (kind, covered)
        assert abs(np.mean(means[kind]) - TRUTH) < 0.03 * TRUTH, (kind, np.mean(means[kind]))
    _, basis = estimate(*logged_lists(0), resamples=10)
    assert basis["lists"] == 3000 and abs(basis["support"] - K / N_OFFERS) < 0.02
    assert basis["largest_weight"] == pytest.approx(N_OFFERS / K)


DECAY = 0.6  # how a place's click rate falls: position^-0.6


def logged_by_place(seed: int, lists: int = 4000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A log whose five offers were all explored into random places, clicked with the
    offer's rate times its place's; the challenger shows only the best offer, first."""
    rng = np.random.default_rng(seed)
    shown = np.vstack([rng.choice(N_OFFERS, K, replace=False) for _ in range(lists)])
    places = np.tile(np.arange(1, K + 1), (lists, 1))
    clicked = rng.random(shown.shape) < THETA[shown] * places ** -DECAY
    logged = pd.DataFrame({
        "request_id": np.repeat([f"r{i}" for i in range(lists)], K),
        "product_id": [f"p{i}" for i in shown.ravel()], "position": places.ravel(),
        "probability": K / N_OFFERS, "explored": True, "clicked": clicked.ravel(),
        "converted": False})
    challenger = pd.DataFrame({"request_id": [f"r{i}" for i in range(lists)],
                               "product_id": f"p{TARGET[0]}"})
    return logged, challenger


def test_the_position_corrected_estimate_credits_outcomes_at_the_challengers_places() -> None:
    """The best offer at the first place earns its full rate; the log showed it at every
    place alike, where plain IPS credits it with the average place's rate."""
    truth = THETA[TARGET[0]]
    covered, plain, decays = 0, [], []
    seeds = 40
    for seed in range(seeds):
        clicks, basis = estimate(*logged_by_place(seed), seed=seed, resamples=300)
        covered += clicks[0].position_ips_low <= truth <= clicks[0].position_ips_high
        plain.append(clicks[0].ips)
        decays.append(basis["position_decay"])
    assert covered / seeds >= 0.85, covered
    assert abs(np.mean(decays) - DECAY) < 0.1
    assert np.mean(plain) < 0.7 * truth
    without, basis = estimate(*logged_lists(0, 200), resamples=10)
    assert basis["position_decay"] is None and without[0].position_ips is None


def test_a_log_that_cannot_speak_for_the_challenger_says_so() -> None:
    logged, challenger = logged_lists(0, 50)
    with pytest.raises(ValueError, match="probability 0"):
        estimate(logged.assign(probability=0.0), challenger)
    with pytest.raises(ValueError, match="ranked none of the logged requests"):
        estimate(logged, challenger.assign(request_id="elsewhere"))


@pytest.mark.slow
def test_the_estimate_from_an_exploring_champion_covers_what_the_challenger_then_earns(
        service_env: Path, saved_model: Any, shop: Path, snapshot_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion (ALS) serves with exploration while simulated customers respond; the
    estimate of the challenger (popularity) from that log is held against what the
    challenger's arm then earns live, the same customers and tastes responding."""
    import bentoml
    from service_client import AUTH, forget_bentoml_collectors
    from starlette.testclient import TestClient

    from features.generate import hidden_tastes
    from features.settings import Settings
    from features.snapshot import load_snapshot
    from nbo.jobs.offpolicy import challenger_engine, evaluate_policy, live_rates
    from nbo.jobs.simulate import Simulator
    from serving.experiments import ARM_MODEL_NAME, Arm, Experiment
    from serving.models import import_model
    from serving.service import NboService
    from serving.store import open_store

    folder = saved_model("popularity", {})
    challenger = import_model(folder, "2", ARM_MODEL_NAME)
    champion = str(bentoml.models.get("nbo-ranker:latest").tag)
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    tastes = hidden_tastes(shop)
    monkeypatch.setenv("NBO_EXPLORE_SHARE", "0.3")
    monkeypatch.setenv("NBO_EXPLORE_MIN_IMPRESSIONS", "1000000")  # every offer explorable
    monkeypatch.setenv("NBO_EXPLORE_SEED", "7")
    with TestClient(NboService.to_asgi(), headers=AUTH) as http:
        Simulator(http, tastes, seed=1).run(400, 3, now + timedelta(hours=1), mail_every=0)
    forget_bentoml_collectors()
    store = open_store(Settings())
    try:
        engine = challenger_engine(folder, "2", Settings(), store)
        foretold = evaluate_policy(engine, store, 30, now + timedelta(days=4), 10)
        assert foretold["lists"] == 1200 and 0 < foretold["support"] < 1
        monkeypatch.setenv("NBO_EXPLORE_SHARE", "0")
        start = now + timedelta(days=5)
        store.add_experiment(Experiment("live", (Arm("champion", 50, champion, "1"),
                                                 Arm("challenger", 50, challenger, "2"))))
        store.move_experiment("live", "running", start)
        with TestClient(NboService.to_asgi(), headers=AUTH) as http:
            Simulator(http, tastes, seed=2).run(400, 3, start + timedelta(hours=1),
                                                mail_every=0)
        forget_bentoml_collectors()
        live = live_rates(store, "live")
        earned = live.loc["challenger", "clicked_per_list_mean"]
        clicks = foretold["estimates"][0]
        assert clicks["metric"] == "clicked_per_list"
        # IPS is unbiased where every offer's response is the same at any position; SNIPS
        # trades bias for variance (bench/results/experiments.md shows both)
        assert clicks["ips_low"] <= earned <= clicks["ips_high"], (clicks, earned)
        assert foretold["position_decay"] is not None
        assert clicks["position_ips_low"] <= earned <= clicks["position_ips_high"], (
            clicks, earned)
        assert earned < live.loc["champion", "clicked_per_list_mean"]
    finally:
        store.close()
