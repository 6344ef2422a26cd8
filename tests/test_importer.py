"""Online Retail importer: unit behaviour on a small file; exact counts and model quality on
the real one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from features.contract import load_dataset
from features.importers import categorise, import_online_retail

if TYPE_CHECKING:
    from training.pipeline import Experiment

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
ROWS = """\
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom
536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.0,17850,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom
C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2010-12-02 09:41:00,2.55,17850,United Kingdom
536380,22633,thrown away,-20,2010-12-02 10:00:00,0,,United Kingdom
A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,,United Kingdom
536381,22633,HAND WARMER UNION JACK,2,2010-12-03 10:00:00,1.85,12583.0,France
536381,22633,HAND WARMER UNION JACK,2,2010-12-03 10:00:00,1.85,12583.0,France
"""


def test_importer_sorts_every_row_into_one_bucket(tmp_path: Path) -> None:
    (tmp_path / "or.csv").write_text(HEADER + ROWS)
    report = import_online_retail(tmp_path / "or.csv", tmp_path / "out")
    assert report.rows_in == 8 == sum(report.buckets.values())
    assert report.buckets == {
        "purchase": 3, "return": 1, "fee or postage (not an offer)": 2,
        "anonymous (no CustomerID)": 1, "stock write-off": 1,
    }
    assert report.returns_matched == 1
    events = pd.read_parquet(tmp_path / "out" / "events.parquet")
    ret = events[events["event_type"] == "return"].iloc[0]
    assert (ret["customer_id"], ret["product_id"], ret["quantity"]) == ("17850", "85123A", 1)
    assert set(events["customer_id"]) == {"17850", "12583"}  # float ids lose their .0
    products = pd.read_parquet(tmp_path / "out" / "products.parquet").set_index("product_id")
    assert "POST" not in products.index and "B" not in products.index
    assert products.loc["22633", "title"] == "HAND WARMER UNION JACK"  # not "thrown away"
    customers = pd.read_parquet(tmp_path / "out" / "customers.parquet").set_index("customer_id")
    assert customers.loc["12583", "region"] == "France"
    data = load_dataset(tmp_path / "out")
    assert data.reports["events"].reasons == {"duplicate event": 1}


def test_categories_come_from_title_words() -> None:
    titles = pd.Series(["WHITE HANGING HEART T-LIGHT HOLDER", "JUMBO BAG RED RETROSPOT",
                        "SET OF 6 SPICE TINS PANTRY DESIGN", "PAPER CHAIN KIT 50'S CHRISTMAS",
                        "SOMETHING UNHEARD OF", None])
    assert categorise(titles).tolist() == ["candles & lights", "bags", "storage", "christmas",
                                           "other", "other"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Online Retail"):
        import_online_retail(tmp_path / "nope.csv", tmp_path / "out")


@pytest.mark.realdata
def test_real_file_counts(online_retail_csv: Path, tmp_path: Path) -> None:
    report = import_online_retail(online_retail_csv, tmp_path / "or")
    # published figures of the source (shared/data/README.md)
    assert report.rows_in == 541_909
    assert report.anonymous_rows == 135_080
    assert sum(report.buckets.values()) == report.rows_in
    assert report.buckets == {
        "purchase": 396_370,
        "anonymous (no CustomerID)": 132_714,
        "return": 8_539,
        "fee or postage (not an offer)": 2_950,
        "stock write-off": 1_336,  # every negative quantity outside a C invoice
    }
    assert report.customers == 4_363
    assert report.fee_codes == 17
    assert report.products == 4_053
    assert report.buckets["return"] + 366 == 8_905  # cancellations with a customer less fees
    assert report.categories["other"] < 0.2 * report.products

    data = load_dataset(tmp_path / "or")
    events = data.reports["events"]
    assert events.read == 396_370 + 8_539
    assert events.reasons == {"duplicate event": events.quarantined}
    assert 5_000 < events.quarantined < 5_268  # the source's exact duplicates with a customer


@pytest.fixture(scope="module")
def real_experiment(online_retail_csv: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Experiment:
    """The real file imported, built and split at 2011-11-09: its last month is the test."""
    from features.snapshot import build_snapshot
    from training.pipeline import prepare

    folder = tmp_path_factory.mktemp("online-retail")
    import_online_retail(online_retail_csv, folder / "or")
    build_snapshot(folder / "or", folder / "snap")
    return prepare(folder / "snap", cutoff=pd.Timestamp("2011-11-09"))


def overall_ndcg(experiment: Experiment, kind: str) -> pd.Series:
    """NDCG@10 per task of a default-configured model, fitted before the cut-off."""
    from training.evaluate import evaluate
    from training.models import create

    table = evaluate(create(kind).fit(experiment.split.data), experiment.split)
    return table[table["group"] == "overall"].set_index("task")["ndcg"]


@pytest.mark.realdata
def test_models_learn_from_the_real_file(real_experiment: Experiment) -> None:
    """On the real data, with its last month as the test, a collaborative model is far ahead
    of popularity on both tasks and the split holds every customer's history before it."""
    assert len(real_experiment.split.test_customers) > 1_000
    popular = overall_ndcg(real_experiment, "popularity")
    als = overall_ndcg(real_experiment, "als")
    assert als["all"] > 2 * popular["all"]
    assert als["novel"] > 1.5 * popular["novel"]


@pytest.mark.realdata
def test_the_blend_leads_ease_and_als_on_the_real_file(real_experiment: Experiment) -> None:
    """The blend the demo promotes is ahead of its strongest parts on both tasks with its
    default config: bench/results/quality.md measured, in its window from this cut-off and
    for customers with history, 0.341 against EASE's 0.256 on 'all' and 0.135 against 0.100
    on 'novel' (this test averages the cold-start customers in too); a change that loses
    that lead fails here."""
    blend = overall_ndcg(real_experiment, "blend")
    for kind in ("ease", "als"):
        other = overall_ndcg(real_experiment, kind)
        assert blend["all"] > other["all"] + 0.02, kind
        assert blend["novel"] > other["novel"] + 0.01, kind
