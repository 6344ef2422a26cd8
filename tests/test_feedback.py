"""The closed loop: responses to served offers shape the next model's training signal."""

from __future__ import annotations

import pandas as pd
import pytest

from features.config import EventWeights
from features.feedback import feedback_weights, response_rates
from features.weights import interactions

NOW = pd.Timestamp("2025-01-01")
W = EventWeights()


def fb(customer: str, product: str, action: str, days_ago: float = 1,
       channel: str = "web") -> dict[str, object]:
    return {"customer_id": customer, "product_id": product, "action": action,
            "timestamp": NOW - pd.Timedelta(days=days_ago), "channel": channel}


def table(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


EVENTS = pd.DataFrame([{"customer_id": "a", "product_id": "x", "event_type": "view",
                        "timestamp": NOW - pd.Timedelta(days=2), "quantity": 1,
                        "rating": None, "order_id": None}])


def pair(frame: pd.DataFrame, customer: str, product: str) -> pd.Series:
    return frame.set_index(["customer_id", "product_id"]).loc[(customer, product)]


def test_a_click_makes_an_offer_a_positive_example() -> None:
    result = interactions(EVENTS, NOW, W, table(fb("b", "y", "impression"), fb("b", "y", "click")))
    assert pair(result, "b", "y")["positive"]
    assert pair(result, "a", "x")["positive"]  # event pairs are kept


def test_dismissals_and_ignored_impressions_are_weak_negatives() -> None:
    shown = [fb("a", "x", "impression", d) for d in (1, 2, 3)]
    result = interactions(EVENTS, NOW, W, table(*shown))
    assert pair(result, "a", "x")["weight"] < pair(interactions(EVENTS, NOW, W), "a", "x")[
        "weight"]
    assert not pair(result, "a", "x")["positive"]
    dismissed = interactions(EVENTS, NOW, W, table(fb("c", "z", "dismiss")))
    assert pair(dismissed, "c", "z")["weight"] < 0


def test_two_impressions_without_a_click_are_not_yet_ignored() -> None:
    weights = feedback_weights(table(fb("a", "x", "impression"), fb("a", "x", "impression")),
                               NOW, W)
    assert weights["weight"].tolist() == [0.0]


def test_feedback_after_now_is_not_used() -> None:
    later = table(fb("b", "y", "click", days_ago=-1))
    assert interactions(EVENTS, NOW, W, later).equals(interactions(EVENTS, NOW, W))


def test_response_rates_per_offer_channel_and_segment() -> None:
    rows = [fb("a", "x", "impression"), fb("a", "x", "click"), fb("b", "x", "impression"),
            fb("b", "y", "impression", channel="email"), fb("b", "y", "dismiss", channel="email")]
    segments = pd.DataFrame({"customer_id": ["a", "b"], "segment": ["s1", "s2"]})
    rates = response_rates(table(*rows), segments)
    by_offer = rates["product_id"].set_index("product_id")
    assert by_offer.loc["x", "click_rate"] == pytest.approx(0.5)
    assert by_offer.loc["y", "dismiss_rate"] == pytest.approx(1.0)
    assert rates["channel"].set_index("channel").loc["email", "impression"] == 1
    assert rates["segment"].set_index("segment").loc["s1", "click"] == 1


def test_feedback_in_a_dataset_reaches_the_snapshot(shop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from features.snapshot import build_snapshot

    dataset = tmp_path / "data"
    shutil.copytree(shop, dataset)
    events = pd.read_parquet(dataset / "events.parquet")
    customer = str(events["customer_id"].iloc[0])
    moment = events["timestamp"].max()
    clicked = pd.DataFrame([{"customer_id": customer, "product_id": "welcome10",
                             "action": action, "timestamp": moment, "channel": "email",
                             "request_id": "r1", "position": 1, "model_version": "1"}
                            for action in ("impression", "click")])
    clicked.to_csv(dataset / "feedback.csv", index=False)
    build_snapshot(dataset, tmp_path / "snap")
    result = pd.read_parquet(tmp_path / "snap" / "interactions.parquet")
    assert pair(result, customer, "welcome10")["positive"]
