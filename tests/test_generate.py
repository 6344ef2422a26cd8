"""The generated shop: valid, deterministic, and with the structure the design promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import load_dataset
from features.generate import ShopSpec, generate_shop


def test_same_seed_same_shop_other_seed_other_shop(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_shop(ShopSpec(customers=120, seed=seed, chunk_customers=50), tmp_path / name)
    for table in ("events", "products", "customers", "consents"):
        a, b = (pd.read_parquet(tmp_path / n / f"{table}.parquet") for n in "ab")
        pd.testing.assert_frame_equal(a, b)
    a, c = (pd.read_parquet(tmp_path / n / "events.parquet") for n in "ac")
    assert not a.equals(c)


def test_shop_is_valid_under_the_contract(shop: Path) -> None:
    data = load_dataset(shop)
    assert all(report.quarantined == 0 for report in data.reports.values()), {
        name: report.reasons for name, report in data.reports.items()
    }


def test_shop_has_every_kind_of_event_offer_and_consent_gap(shop: Path) -> None:
    data = load_dataset(shop)
    assert set(data.events["event_type"]) == {"purchase", "return", "wishlist", "rating",
                                               "cart", "view"}
    products = data.products
    assert (products["stock"] == 0).any()
    assert (products["valid_to"] < data.events["timestamp"].max()).any()  # expired
    assert products["region"].notna().any()
    assert (products["min_age"] >= 18).any()
    assert products["sensitive"].any()
    coupons = products[products["offer_type"] == "coupon"]
    assert {"new;prospect", "at_risk;lapsed"} <= set(coupons["lifecycle_stages"])
    consents = data.consents
    has_email = set(consents.loc[consents["purpose"] == "email", "customer_id"])
    assert len(has_email) < len(data.customers)  # some have no e-mail record at all
    email = consents[(consents["purpose"] == "email") & consents["granted"]]
    assert (~email["double_opt_in"]).any() and email["double_opt_in"].any()
    personal = consents[consents["purpose"] == "personalization"]
    assert (~personal["granted"]).any()


def test_returns_follow_dislike(shop: Path) -> None:
    """Returned purchases are rated lower than kept ones: returns carry a taste signal."""
    events = pd.read_parquet(shop / "events.parquet")
    rated = events[events["event_type"] == "rating"].set_index(["customer_id", "product_id"])
    returned = events[events["event_type"] == "return"].set_index(["customer_id", "product_id"])
    is_returned = rated.index.isin(returned.index)
    assert rated["rating"][is_returned].mean() < rated["rating"][~is_returned].mean() - 1


def test_hidden_taste_is_learnable(shop: Path) -> None:
    """A customer's later purchases fall in the categories of their earlier ones far more
    often than the catalogue's category mix would give."""
    events = pd.read_parquet(shop / "events.parquet")
    products = pd.read_parquet(shop / "products.parquet").set_index("product_id")
    buys = events[events["event_type"] == "purchase"].sort_values("timestamp")
    buys = buys.assign(category=buys["product_id"].map(products["category"]))
    first = buys.groupby("customer_id").head(1).set_index("customer_id")["category"]
    rest = buys[~buys.index.isin(buys.groupby("customer_id").head(1).index)]
    same = (rest["category"].to_numpy() == first.reindex(rest["customer_id"]).to_numpy()).mean()
    base = (buys["category"].value_counts(normalize=True) ** 2).sum()
    assert same > 2 * base


def test_chunked_generation_streams_events(tmp_path: Path) -> None:
    counts = generate_shop(ShopSpec(customers=300, seed=1, chunk_customers=64), tmp_path)
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert len(events) == counts["events"]
    assert events["customer_id"].nunique() <= 300
    assert np.all(pd.read_parquet(tmp_path / "customers.parquet")["customer_id"].is_unique)


def test_csv_format(tmp_path: Path) -> None:
    generate_shop(ShopSpec(customers=60, seed=2, file_format="csv", chunk_customers=25), tmp_path)
    data = load_dataset(tmp_path)
    assert data.reports["events"].read > 0
    assert data.reports["events"].quarantined == 0


def test_a_ratings_only_shop_records_only_ratings_of_what_was_taken(tmp_path: Path) -> None:
    """The same customers and tastes as a full shop, every taken thing rated 1 to 5 and
    nothing else recorded; the contract accepts it."""
    generate_shop(ShopSpec(customers=300, seed=3), tmp_path / "full")
    generate_shop(ShopSpec(customers=300, seed=3, ratings_only=True), tmp_path / "rated")
    full, rated = (load_dataset(tmp_path / name) for name in ("full", "rated"))
    assert all(report.quarantined == 0 for report in rated.reports.values())
    events = rated.events
    assert set(events["event_type"].astype(str)) == {"rating"}
    assert events["rating"].between(1, 5).all() and events["rating"].nunique() == 5
    bought = full.events[full.events["event_type"] == "purchase"]
    # a rating per purchase of the full shop, but those rated after the shop's last day
    pairs = set(zip(bought["customer_id"], bought["product_id"], strict=True))
    assert set(zip(events["customer_id"], events["product_id"], strict=True)) <= pairs
    assert 0.97 * len(bought) <= len(events) <= len(bought)
    pd.testing.assert_frame_equal(rated.customers, full.customers)
