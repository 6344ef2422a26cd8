"""Features: weights, customer state and lifecycle, segments and snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import FeatureConfig, LifecycleConfig, from_flat, to_flat
from features.snapshot import build_snapshot, compute_features, load_snapshot
from features.state import customer_state, lifecycle_stage, stage_from_days, stage_of
from features.weights import EventWeights, interactions

NOW = pd.Timestamp("2025-01-01")
W = EventWeights()


def ev(customer: str, product: str, kind: str, days_ago: float, quantity: int = 1,
       rating: float | None = None, order: str | None = None) -> dict[str, object]:
    return {"customer_id": customer, "product_id": product, "event_type": kind,
            "timestamp": NOW - pd.Timedelta(days=days_ago), "quantity": quantity,
            "rating": rating, "order_id": order}


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def pair(table: pd.DataFrame, customer: str, product: str) -> pd.Series:
    return table.set_index(["customer_id", "product_id"]).loc[(customer, product)]


def test_purchases_are_damped_and_decay_with_age() -> None:
    table = interactions(frame(ev("a", "x", "purchase", 0, quantity=3),
                               ev("a", "y", "purchase", W.half_life_days)), NOW, W)
    assert pair(table, "a", "x")["weight"] == pytest.approx(2.0)  # log2(1 + 3)
    assert pair(table, "a", "y")["weight"] == pytest.approx(0.5)  # one half-life old


def test_returned_products_are_never_positive_even_when_net_weight_is() -> None:
    table = interactions(frame(ev("a", "x", "purchase", 10, quantity=20),
                               ev("a", "x", "return", 5, quantity=1)), NOW, W)
    row = pair(table, "a", "x")
    assert row["weight"] > 0
    assert row["returned"] and not row["positive"]


def test_low_ratings_are_negative_and_never_positive() -> None:
    table = interactions(frame(ev("a", "x", "purchase", 10), ev("a", "x", "rating", 1, rating=2),
                               ev("b", "x", "rating", 1, rating=1),
                               ev("c", "x", "rating", 1, rating=5)), NOW, W)
    assert not pair(table, "a", "x")["positive"]
    assert pair(table, "b", "x")["weight"] < 0 and not pair(table, "b", "x")["positive"]
    assert pair(table, "c", "x")["positive"]


def test_the_latest_rating_counts_whatever_the_row_order() -> None:
    rows = [ev("a", "x", "purchase", 30), ev("a", "x", "rating", 1, rating=5),
            ev("a", "x", "rating", 20, rating=1), ev("b", "x", "rating", 2, rating=1),
            ev("b", "x", "rating", 9, rating=4)]
    for shuffled in (rows, rows[::-1]):
        table = interactions(frame(*shuffled), NOW, W)
        assert pair(table, "a", "x")["last_rating"] == 5 and pair(table, "a", "x")["positive"]
        assert pair(table, "b", "x")["last_rating"] == 1 and not pair(table, "b", "x")["positive"]


def test_zero_or_negative_net_weight_is_not_positive() -> None:
    w = EventWeights(view=0.0)
    table = interactions(frame(ev("a", "x", "view", 1)), NOW, w)
    assert pair(table, "a", "x")["weight"] == 0 and not pair(table, "a", "x")["positive"]


def test_events_after_now_are_not_used() -> None:
    table = interactions(frame(ev("a", "x", "view", 3), ev("a", "y", "purchase", -1)), NOW, W)
    assert set(table["product_id"]) == {"x"}


CFG = LifecycleConfig(new_days=30, at_risk_days=90, lapsed_days=180, at_risk_gap_factor=2.0,
                      min_orders_for_gap=3)


@pytest.mark.parametrize(("first", "last", "gap", "stage"), [
    (None, None, None, "prospect"),
    (30, 30, None, "new"),          # exactly new_days ago is still new
    (30.01, 30.01, None, "active"),
    (200, 90, None, "active"),      # exactly at_risk_days is not yet at risk
    (200, 90.01, None, "at_risk"),
    (400, 180, None, "at_risk"),    # exactly lapsed_days is not yet lapsed
    (400, 180.01, None, "lapsed"),
    (400, 21, 10.0, "at_risk"),     # beyond twice the usual gap of 10 days
    (400, 20, 10.0, "active"),
])
def test_lifecycle_stage_boundaries(first: float | None, last: float | None,
                                    gap: float | None, stage: str) -> None:
    def ago(days: float | None) -> pd.Series:
        return pd.Series([NOW - pd.Timedelta(days=days) if days is not None else pd.NaT],
                         dtype="datetime64[ns]")

    result = lifecycle_stage(ago(first), ago(last), pd.Series([gap], dtype=float), NOW, CFG)
    assert result.tolist() == [stage]
    days = [np.nan if d is None else float(d) for d in (first, last, gap)]
    assert stage_of(*days, CFG) == stage  # a request's one customer


def test_one_customers_stage_is_the_stage_the_arrays_give() -> None:
    rng = np.random.default_rng(4)
    first = rng.choice([np.nan, 10.0, 30.0, 30.5, 200.0, 400.0], 5_000) + rng.choice(
        [0.0, 0.0, 0.25], 5_000)
    last = np.where(np.isnan(first), np.nan, np.minimum(first, rng.choice(
        [1.0, 20.0, 21.0, 90.0, 90.01, 180.0, 180.01, 300.0], 5_000)))
    gap = rng.choice([np.nan, 5.0, 10.0, 45.0, 80.0], 5_000)
    for cfg in (CFG, LifecycleConfig()):
        expected = stage_from_days(first, last, gap, cfg)
        got = [stage_of(f, la, g, cfg) for f, la, g in zip(first, last, gap, strict=True)]
        assert got == expected.tolist()


def state_of(events: pd.DataFrame, now: pd.Timestamp = NOW) -> pd.DataFrame:
    products = pd.DataFrame({"product_id": ["x", "y", "z"], "price": [10.0, 5.0, 1.0]})
    customers = pd.DataFrame({"customer_id": ["a", "q"], "birth_year": [1990, None],
                              "region": ["north", "south"]})
    return customer_state(events, customers, products, now, CFG).set_index("customer_id")


def test_customer_state_summarises_history() -> None:
    state = state_of(frame(
        ev("a", "x", "purchase", 100, quantity=2, order="o1"),
        ev("a", "y", "purchase", 100, order="o1"),
        ev("a", "x", "purchase", 60, order="o2"),
        ev("a", "y", "return", 55),
        ev("a", "z", "purchase", 20, order="o3"),
        ev("a", "x", "view", 2), ev("a", "z", "cart", 1.9),
    ))
    a = state.loc["a"]
    assert a["orders"] == 3 and a["purchases"] == 4
    assert a["value"] == pytest.approx(2 * 10 + 5 + 10 + 1)
    assert a["usual_gap_days"] == pytest.approx(40)
    assert a["returned_items"] == ["y"]
    assert sorted(a["last_visit_items"]) == ["x", "z"]
    assert a["lifecycle_stage"] == "active"
    assert a["region"] == "north" and a["age_band"] == "35-44"
    q = state.loc["q"]  # known from the customer table only
    assert q["lifecycle_stage"] == "prospect" and q["age_band"] == "unknown"


def test_state_as_of_now_uses_no_later_event() -> None:
    history = frame(ev("a", "x", "purchase", 100, order="o1"))
    later = frame(ev("a", "y", "purchase", -5, order="o9"), ev("a", "x", "return", -3),
                  ev("a", "z", "view", -1))
    before = state_of(history)
    after = state_of(pd.concat([history, later], ignore_index=True))
    pd.testing.assert_frame_equal(before, after)


def test_config_round_trips_through_flat_params() -> None:
    config = FeatureConfig(lifecycle=LifecycleConfig(new_days=14))
    flat = to_flat(config)
    assert flat["lifecycle.new_days"] == 14 and "weights.return" in flat
    assert from_flat(FeatureConfig, flat) == config
    with pytest.raises(ValueError, match="bogus"):
        from_flat(FeatureConfig, {**flat, "weights.bogus": 1})


def test_segments_name_every_customer(shop: Path) -> None:
    from features.contract import load_dataset

    data = load_dataset(shop)
    features = compute_features(data.events, data.products, data.customers,
                                data.events["timestamp"].max(), FeatureConfig())
    segments = features.customer_features.set_index("customer_id")["segment"]
    state = features.customer_state.set_index("customer_id")
    assert segments.notna().all()
    assert (segments[state["orders"] == 0] == "prospects").all()
    buyers = segments[state["orders"] > 0]
    assert 2 <= buyers.nunique() <= FeatureConfig().segments.n_segments
    assert all(name.endswith(("buyers", ")")) for name in buyers.unique())
    assert features.segments["customers"].sum() == len(state)


def test_snapshot_writes_tables_and_manifest(shop: Path, tmp_path: Path) -> None:
    manifest = build_snapshot(shop, tmp_path / "snap")
    on_disk = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert on_disk["fingerprint"] == manifest["fingerprint"] and len(manifest["fingerprint"]) == 64
    assert on_disk["config"] == to_flat(FeatureConfig())
    snapshot = load_snapshot(tmp_path / "snap")
    assert len(snapshot.events) == manifest["rows"]["events"]
    assert len(snapshot.features.customer_state) == manifest["rows"]["customer_state"]
    assert snapshot.now == snapshot.events["timestamp"].max()
    assert set(snapshot.features.customer_state["lifecycle_stage"]) >= {"prospect", "active",
                                                                       "lapsed"}
    assert snapshot.config == FeatureConfig()


def test_snapshot_fails_on_too_much_bad_input_but_keeps_the_quarantine(
    shop: Path, tmp_path: Path
) -> None:
    from features.contract import ContractError

    dataset = tmp_path / "data"
    dataset.mkdir()
    events = pd.read_parquet(shop / "events.parquet")
    events.loc[::5, "event_type"] = "teleport"
    events.to_parquet(dataset / "events.parquet")
    pd.read_parquet(shop / "products.parquet").to_parquet(dataset / "products.parquet")
    with pytest.raises(ContractError, match=r"events\.parquet"):
        build_snapshot(dataset, tmp_path / "snap", max_bad_share=0.05)
    quarantined = pd.read_csv(tmp_path / "snap" / "quarantine" / "events.csv")
    assert len(quarantined) == len(events.iloc[::5])
    build_snapshot(shop, tmp_path / "snap")  # a good build; then the bad one again over it
    with pytest.raises(ContractError):
        build_snapshot(dataset, tmp_path / "snap", max_bad_share=0.05)
    assert load_snapshot(tmp_path / "snap").manifest["validation"]["events"]["quarantined"] == 0
    beside = pd.read_csv(tmp_path / "snap.quarantine" / "events.csv")
    assert len(beside) == len(events.iloc[::5])


def test_a_rebuild_that_dies_half_way_leaves_the_old_snapshot_whole(
        shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "snap"
    build_snapshot(shop, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "other"
    other.mkdir()
    for name in ("events", "products", "customers", "consents"):
        frame = pd.read_parquet(shop / f"{name}.parquet")
        (frame.iloc[::2] if name == "events" else frame).to_parquet(other / f"{name}.parquet")
    written = []
    real = pd.DataFrame.to_parquet

    def dies_on_the_third(frame, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        written.append(path)
        if len(written) == 3:
            raise OSError("disk gone")
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_on_the_third)
    with pytest.raises(OSError, match="disk gone"):
        build_snapshot(other, out)
    monkeypatch.undo()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert {p.name for p in tmp_path.iterdir()} == {"snap", "other"}  # nothing left behind
    rebuilt = build_snapshot(other, out)
    assert load_snapshot(out).manifest["fingerprint"] == rebuilt["fingerprint"] != \
        json.loads(before[Path("manifest.json")])["fingerprint"]
