"""Data contract: every kind of bad row is quarantined with its reason, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features.contract import ContractError, load_dataset, validate_tables


def products() -> pd.DataFrame:
    return pd.DataFrame({
        "product_id": ["p1", "p2", "p3"],
        "title": ["Pan", "Kite", "Wine"],
        "category": ["kitchen", "toys", "wine"],
        "price": ["10", "5.5", "8"],
        "stock": ["", "4", "0"],
        "min_age": ["", "", "18"],
        "sensitive": ["false", "", "no"],
        "lifecycle_stages": ["", "new;prospect", ""],
        "channels": ["", "web", "email;app"],
    })


def events() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": ["c1", "c1", "c2", "c2", "c3"],
        "product_id": ["p1", "p2", "p1", "p3", "p2"],
        "event_type": ["purchase", "view", "rating", "return", "wishlist"],
        "timestamp": ["2024-01-01T10:00:00", "2024-01-02", "1704240000", "2024-01-04T00:00Z",
                      "2024-01-05 08:00:00+01:00"],
        "quantity": ["2", "", "", "1", ""],
        "rating": ["", "", "4", "", ""],
    })


def test_clean_tables_keep_every_row() -> None:
    data = validate_tables({"events": events(), "products": products()})
    assert len(data.events) == 5 and len(data.products) == 3
    assert all(r.quarantined == 0 for r in data.reports.values())


def test_timestamps_are_utc_whatever_their_form() -> None:
    data = validate_tables({"events": events(), "products": products()})
    stamps = data.events["timestamp"].tolist()
    assert stamps[2] == pd.Timestamp("2024-01-03")  # epoch seconds
    assert stamps[4] == pd.Timestamp("2024-01-05 07:00:00")  # +01:00 to UTC


EVENT_CASES = [
    ("customer_id", "", "missing customer_id"),
    ("product_id", None, "missing product_id"),
    ("product_id", "p404", "unknown product"),
    ("event_type", "teleport", "unknown event_type"),
    ("timestamp", "yesterday-ish", "bad timestamp"),
    ("quantity", "-3", "bad quantity"),
    ("quantity", "1.5", "bad quantity"),
    ("quantity", "lots", "bad quantity"),
]


@pytest.mark.parametrize(("column", "value", "reason"), EVENT_CASES)
def test_each_kind_of_bad_event_is_quarantined(column: str, value: object, reason: str) -> None:
    frame = events()
    frame.loc[0, column] = value
    data = validate_tables({"events": frame, "products": products()})
    bad = data.quarantine["events"]
    assert bad["reason"].tolist() == [reason]
    assert bad["source_row"].tolist() == [1]
    assert len(data.events) == 4


@pytest.mark.parametrize("rating", ["0", "6", "", "five"])
def test_rating_out_of_range_is_quarantined(rating: str) -> None:
    frame = events()
    frame.loc[2, "rating"] = rating
    data = validate_tables({"events": frame, "products": products()})
    assert data.quarantine["events"]["reason"].tolist() == ["rating out of range"]


def test_duplicate_event_keeps_the_first() -> None:
    frame = pd.concat([events(), events().iloc[[1]]], ignore_index=True)
    data = validate_tables({"events": frame, "products": products()})
    assert data.quarantine["events"]["reason"].tolist() == ["duplicate event"]
    assert data.quarantine["events"]["source_row"].tolist() == [6]


PRODUCT_CASES = [
    ("price", "-1", "bad price"),
    ("stock", "-2", "bad stock"),
    ("min_age", "old", "bad min_age"),
    ("sensitive", "maybe", "bad sensitive flag"),
    ("lifecycle_stages", "new;vip", "unknown lifecycle stage"),
    ("channels", "fax", "unknown channel"),
    ("product_id", "p2", "duplicate product_id"),
]


@pytest.mark.parametrize(("column", "value", "reason"), PRODUCT_CASES)
def test_each_kind_of_bad_product_is_quarantined(column: str, value: str, reason: str) -> None:
    frame = products()
    frame.loc[2, column] = value
    data = validate_tables({"events": events().iloc[:3], "products": frame})
    assert data.quarantine["products"]["reason"].tolist() == [reason]


def test_events_of_a_quarantined_product_become_unknown_product() -> None:
    frame = products()
    frame.loc[0, "price"] = "-5"
    data = validate_tables({"events": events(), "products": frame})
    reasons = data.quarantine["events"]["reason"].value_counts().to_dict()
    assert reasons == {"unknown product": 2}


def test_validity_window_must_not_end_before_it_starts() -> None:
    frame = products().assign(valid_from=["2024-02-01", "", ""], valid_to=["2024-01-01", "", ""])
    data = validate_tables({"events": events().iloc[1:2], "products": frame})
    assert data.quarantine["products"]["reason"].tolist() == [
        "validity window ends before it starts"
    ]


def test_an_end_beyond_2200_means_no_end() -> None:
    frame = products().assign(valid_to=["9999-12-31", "2030-01-01", "soon"])
    data = validate_tables({"events": events().iloc[1:2], "products": frame})
    assert data.quarantine["products"]["reason"].tolist() == ["bad validity date"]
    assert data.products["valid_to"].isna().tolist() == [True, False]


@pytest.mark.parametrize("moment", ["0001-01-01", "1969-12-31T23:59:59", "2200-01-01",
                                    "9999-06-01T00:00:00", "-1", "1e20"])
def test_moments_outside_1970_to_2200_are_bad_timestamps(moment: str) -> None:
    frame = events().assign(timestamp=[moment, *events()["timestamp"][1:]])
    data = validate_tables({"events": frame, "products": products()})
    assert data.quarantine["events"]["reason"].tolist() == ["bad timestamp"]


def test_bad_customers_and_consents_are_quarantined() -> None:
    customers = pd.DataFrame({"customer_id": ["c1", "c1", "c2", "c3"],
                              "birth_year": ["1980", "1981", "1850", ""]})
    consents = pd.DataFrame({"customer_id": ["c1", "c2", "c3"],
                             "purpose": ["email", "telepathy", "sms"],
                             "granted": ["true", "true", "perhaps"]})
    data = validate_tables({"events": events(), "products": products(),
                            "customers": customers, "consents": consents})
    assert data.quarantine["customers"]["reason"].tolist() == ["duplicate customer_id",
                                                               "bad birth_year"]
    assert data.quarantine["consents"]["reason"].tolist() == ["unknown purpose",
                                                              "bad granted flag"]


def test_kept_plus_quarantined_equals_read(shop: Path, tmp_path: Path) -> None:
    frame = pd.read_parquet(shop / "events.parquet")
    broken = frame.copy()
    broken.loc[::50, "product_id"] = "nope"
    broken.loc[7::97, "event_type"] = "hover"
    broken["timestamp"] = broken["timestamp"].astype(str)
    broken.loc[3::201, "timestamp"] = "not a time"
    broken = pd.concat([broken, broken.iloc[:40]], ignore_index=True)
    broken.to_csv(tmp_path / "events.csv", index=False)
    pd.read_parquet(shop / "products.parquet").to_parquet(tmp_path / "products.parquet")

    data = load_dataset(tmp_path)
    report = data.reports["events"]
    assert report.read == len(broken)
    assert report.kept + report.quarantined == report.read
    assert len(data.events) == report.kept
    assert len(data.quarantine["events"]) == report.quarantined
    assert sum(report.reasons.values()) == report.quarantined
    assert {"unknown product", "unknown event_type", "bad timestamp",
            "duplicate event"} <= set(report.reasons)

    written = data.write_quarantine(tmp_path / "q")
    assert len(pd.read_csv(tmp_path / "q" / "events.csv")) == report.quarantined
    assert written == [tmp_path / "q" / "events.csv"]
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    counted = pd.read_csv(tmp_path / "q" / "events.csv")["reason"].value_counts().to_dict()
    assert summary["events"]["reasons"] == counted
    assert summary["events"]["quarantined"] == report.quarantined


def test_too_many_bad_rows_fail_with_a_clear_message(tmp_path: Path) -> None:
    frame = events()
    frame.loc[:2, "event_type"] = "teleport"
    frame.to_csv(tmp_path / "events.csv", index=False)
    products().to_csv(tmp_path / "products.csv", index=False)
    data = load_dataset(tmp_path)
    data.check_bad_share(0.7)  # 3 of 5 is within 70 %
    message = r"events\.csv: 3 of 5 events rows .* unknown event_type"
    with pytest.raises(ContractError, match=message):
        data.check_bad_share(0.05)


def test_missing_required_table_is_a_clear_error(tmp_path: Path) -> None:
    events().to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(ContractError, match="required table 'products' is missing"):
        load_dataset(tmp_path)


def test_missing_required_column_is_a_clear_error(tmp_path: Path) -> None:
    events().drop(columns=["event_type"]).to_csv(tmp_path / "events.csv", index=False)
    products().to_csv(tmp_path / "products.csv", index=False)
    with pytest.raises(ContractError, match=r"events.csv: required column\(s\) event_type"):
        load_dataset(tmp_path)


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    events().assign(campaign="spring").to_csv(tmp_path / "events.csv", index=False)
    products().to_csv(tmp_path / "products.csv", index=False)
    assert (load_dataset(tmp_path).events["campaign"] == "spring").all()


def test_the_contract_page_names_every_column_and_reason() -> None:
    import re

    import features.contract as contract

    page = (Path(contract.__file__).parents[1] / "docs" / "data-contract.md").read_text()
    source = Path(contract.__file__).read_text()
    reasons = set(re.findall(r'^\s*"([a-z][a-z_ ]+)",?\)?$', source, re.M)) | set(
        re.findall(r'reasons\.add\(.*?"([a-z][^"]+)"\)', source, re.S))
    assert {"bad quantity", "unknown product", "bad validity date"} <= reasons
    missing = sorted(r for r in reasons if f'"{r}"' not in page)
    assert not missing, missing
    columns = {c for table in (*contract.REQUIRED_COLUMNS.values(),
                               *contract.OPTIONAL_COLUMNS.values()) for c in table}
    assert not sorted(c for c in columns if f"`{c}`" not in page)


def test_birth_dates_are_checked_against_the_calendar_and_the_birth_year() -> None:
    customers = pd.DataFrame({
        "customer_id": ["leap", "no-year", "disagree", "old", "future", "garbled", "none"],
        "birth_year": ["1980", "", "1981", "", "", "", "1990"],
        "birth_date": ["1980-02-29", "1975-07-14", "1980-01-01", "1899-12-31", "2999-01-01",
                       "14/07/1975", ""]})
    data = validate_tables({"events": events(), "products": products(), "customers": customers},
                           now=pd.Timestamp("2026-01-01"))
    quarantined = data.quarantine["customers"].set_index("customer_id")["reason"].to_dict()
    assert quarantined == {"disagree": "birth_date and birth_year disagree",
                           "old": "bad birth_date", "future": "bad birth_date",
                           "garbled": "bad birth_date"}
    kept = data.customers.set_index("customer_id")
    assert kept.loc["no-year", "birth_year"] == 1975  # the year is read from the date
    assert str(kept.loc["leap", "birth_date"].date()) == "1980-02-29"
    assert pd.isna(kept.loc["none", "birth_date"]) and kept.loc["none", "birth_year"] == 1990
