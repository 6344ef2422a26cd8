"""Importers that turn public retail data into a dataset in the nbo data contract."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.columns import EventType as E
from features.contract import ContractError, counts

ONLINE_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                         "UnitPrice", "CustomerID", "Country")
# stock codes that are charges, postage, manual entries or vouchers rather than offers
FEE_CODES = frozenset({"POST", "DOT", "M", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK",
                       "PADS", "B"})
FEE_PREFIXES = ("gift_0001",)

# first matching rule names the category; words are matched whole in the upper-case title
CATEGORY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("christmas", ("CHRISTMAS", "XMAS", "ADVENT", "SANTA", "REINDEER", "NATIVITY")),
    ("easter", ("EASTER",)),
    ("party", ("PARTY", "BUNTING", "BALLOONS?", "CONFETTI", "PARTY CONES")),
    ("candles & lights", ("CANDLES?", "T-LIGHTS?", "TLIGHTS?", "LANTERNS?", "LIGHTS?", "LAMPS?",
                          "NIGHT LIGHT", "CANDLEHOLDER", "CANDLESTICK", "TORCH",
                          "INCENSE", "LAMPSHADE")),
    ("bags", ("BAGS?", "TOTE", "SHOPPER", "BACKPACK", "PURSE", "RUCKSACK", "HANDBAG",
              "WASHBAG")),
    ("jewellery", ("NECKLACE", "EARRINGS", "BRACELET", "RING", "BROOCH", "CHARM", "HAIRCLIP",
                   "HAIR", "DIAMANTE")),
    ("tableware", ("MUGS?", "CUPS?", "SAUCERS?", "PLATES?", "BOWLS?", "TEACUP", "GLASS",
                   "BEAKERS?", "NAPKINS?", "JUG", "TEAPOT", "COASTERS?", "TUMBLER", "STRAWS",
                   "TRAYS?", "PLACEMATS?", "DISH", "EGG CUPS?", "TEA COSY")),
    ("kitchen & baking", ("CAKE", "CAKES", "BAKING", "MOULD", "JAR", "JARS", "LUNCH BOX",
                          "LUNCHBOX", "KITCHEN", "APRON", "TEA TOWELS?", "SPOONS?", "CUTLERY",
                          "OVEN", "CAKESTAND", "RECIPE", "BOTTLE", "CASES", "SCALES")),
    ("stationery & wrap", ("CARDS?", "NOTEBOOK", "PENCILS?", "PENS?", "STICKERS?", "ERASERS?",
                           "NOTES", "WRAP", "PAPER", "ENVELOPES?", "TAPE", "CALENDAR", "DIARY",
                           "TISSUES", "RIBBONS?", "GIFT TAGS?", "CHALK", "NOTEPAD", "JOURNAL")),
    ("toys & games", ("TOYS?", "DOLLY", "DOLLS?", "GAMES?", "PUZZLE", "SPACEBOY", "JIGSAW",
                      "SKITTLES", "DOMINOES", "PLAYHOUSE", "CHILDRENS?", "KIDS", "CRAYONS",
                      "PAINTING", "COLOURING", "TEDDY", "SOLDIER", "BLOCK WORD")),
    ("garden", ("GARDEN", "PLANTS?", "FLOWER POT", "WATERING", "BIRD", "HERB", "POTTING",
                "SEED", "GNOME", "FLOWERS?")),
    ("textiles", ("BLANKET", "THROW", "HOT WATER BOTTLE", "TOWEL", "SCARF", "UMBRELLA",
                  "GLOVES", "SLIPPERS", "CUSHION COVER", "QUILT", "PICNIC")),
    ("storage", ("BOX", "BOXES", "BASKETS?", "STORAGE", "TINS?", "DRAWERS?", "CABINET", "CRATE",
                 "HOLDER", "TRINKET", "CASE", "RACK", "CONTAINER",
                 "HANGERS?")),
    ("home decor", ("SIGN", "FRAME", "CLOCK", "CUSHION", "MIRROR", "ORNAMENT", "DECORATION",
                    "HEARTS?", "WREATH", "VASE", "DOORMAT", "HOOKS?", "COAT HANGER",
                    "PLAQUE", "CHALKBOARD", "DOORSTOP", "GARLAND", "HANGING", "BELL", "BIRDS",
                    "MAGNETS?", "CURTAIN", "COVER", "LETTERS")),
)


@dataclass
class ImportReport:
    """How every source row was used; ``rows_in`` equals the sum of ``buckets``."""

    source: str
    rows_in: int
    buckets: dict[str, int] = field(default_factory=dict)
    anonymous_rows: int = 0
    returns_matched: int = 0
    products: int = 0
    fee_codes: int = 0
    customers: int = 0
    categories: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.rows_in:>9,} rows read from {self.source}"]
        out += [f"{n:>9,}  {bucket}" for bucket, n in self.buckets.items()]
        out += [
            f"{self.anonymous_rows:>9,} rows without CustomerID in the source",
            f"{self.returns_matched:>9,} returns follow a purchase of the same customer and "
            f"product",
            f"{self.products:>9,} offers in the catalogue, {self.fee_codes} fee/postage codes "
            f"left out",
            f"{self.customers:>9,} customers",
        ]
        return out


def categorise(titles: pd.Series) -> pd.Series:
    """Category from title words (the source has none); 'other' when no rule matches."""
    text = titles.fillna("").str.upper()
    category = pd.Series("other", index=titles.index, dtype=object)
    assigned = pd.Series(False, index=titles.index)
    for name, words in CATEGORY_RULES:
        pattern = r"\b(?:" + "|".join(words) + r")\b"
        hit = ~assigned & text.str.contains(pattern, regex=True, flags=re.IGNORECASE)
        category[hit] = name
        assigned |= hit
    return category


def is_fee_code(codes: pd.Series) -> pd.Series:
    upper = codes.str.upper()
    return upper.isin(FEE_CODES) | codes.str.startswith(FEE_PREFIXES)


def read_online_retail(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file; the UCI Online Retail CSV is expected there "
            f"(columns {', '.join(ONLINE_RETAIL_COLUMNS)})."
        )
    try:
        raw = pd.read_csv(
            path, dtype={"InvoiceNo": str, "StockCode": str, "Description": str,
                         "CustomerID": str, "Country": str},
            keep_default_na=False, na_values=[""],
        )
    except Exception as exc:
        raise ContractError(f"{path}: cannot be read as CSV ({exc}).") from exc
    missing = [c for c in ONLINE_RETAIL_COLUMNS if c not in raw.columns]
    if missing:
        raise ContractError(f"{path}: not the Online Retail layout; missing {', '.join(missing)}.")
    return raw


def import_online_retail(path: Path, out: Path) -> ImportReport:
    """Convert the UCI Online Retail CSV into events, products and customers in ``out``.

    Cancelled invoices (``C…``) become returns; fee and postage codes are left out of the
    catalogue; rows without CustomerID are counted but belong to no customer; stock write-offs
    (negative quantity outside a cancellation) and bad-debt adjustments are left out.
    """
    raw = read_online_retail(path)
    invoice = raw["InvoiceNo"].str.strip()
    code = raw["StockCode"].str.strip()
    customer = raw["CustomerID"].str.strip().str.replace(r"\.0$", "", regex=True)
    quantity = pd.to_numeric(raw["Quantity"], errors="coerce")
    bucket = np.select(
        [
            is_fee_code(code).to_numpy(),
            invoice.str.startswith("A").to_numpy(),
            (~invoice.str.startswith("C") & (quantity < 0)).to_numpy(),
            customer.isna().to_numpy(),
            (invoice.str.startswith("C") & (quantity < 0)).to_numpy(),
            ~(quantity > 0).to_numpy(),
        ],
        ["fee or postage (not an offer)", "bad-debt adjustment", "stock write-off",
         "anonymous (no CustomerID)", "return", "no usable quantity"],
        default="purchase",
    )
    report = ImportReport(source=str(path), rows_in=len(raw))
    report.buckets = counts(pd.Series(bucket))
    report.anonymous_rows = int(customer.isna().sum())

    kept = np.isin(bucket, ["purchase", "return"])
    events = pd.DataFrame({
        C.customer: customer[kept],
        C.product: code[kept],
        C.event_type: np.where(bucket[kept] == "return", E.return_, E.purchase),
        C.timestamp: pd.to_datetime(raw["InvoiceDate"][kept], format="mixed"),
        C.quantity: quantity[kept].abs().astype("int64"),
        C.order: invoice[kept],
        "unit_price": raw["UnitPrice"][kept],
    }).reset_index(drop=True)
    report.returns_matched = _returns_after_purchase(events)

    products = _products(raw.assign(StockCode=code), ~is_fee_code(code))
    report.fee_codes = int(code[is_fee_code(code)].nunique())
    report.products = len(products)
    report.categories = counts(products[C.category])
    customers = _customers(raw.assign(CustomerID=customer), kept)
    report.customers = len(customers)

    out.mkdir(parents=True, exist_ok=True)
    events.to_parquet(out / "events.parquet", index=False)
    products.to_parquet(out / "products.parquet", index=False)
    customers.to_parquet(out / "customers.parquet", index=False)
    return report


def _returns_after_purchase(events: pd.DataFrame) -> int:
    purchases = events[events[C.event_type] == E.purchase]
    first = purchases.groupby([C.customer, C.product])[C.timestamp].min()
    returns = events[events[C.event_type] == E.return_]
    pairs = pd.MultiIndex.from_frame(returns[[C.customer, C.product]])
    bought_at = pd.to_datetime(pd.Series(pairs.map(first.get), index=returns.index))
    return int((bought_at <= returns[C.timestamp]).sum())


def _products(raw: pd.DataFrame, is_offer: pd.Series) -> pd.DataFrame:
    rows = raw[is_offer]
    # titles from real sales; write-off rows carry warehouse notes ("thrown away")
    described = rows.dropna(subset=["Description"])
    described = described.sort_values("UnitPrice", ascending=False, kind="stable")
    described = described[(described["UnitPrice"] > 0) | ~described["StockCode"].duplicated()]
    title = (described.groupby("StockCode")["Description"]
             .agg(lambda s: s.value_counts().index[0]).str.strip())
    sold = rows[(rows["Quantity"] > 0) & (rows["UnitPrice"] > 0)]
    price = sold.groupby("StockCode")["UnitPrice"].median()
    codes = pd.Index(rows["StockCode"].unique(), name=C.product)
    frame = pd.DataFrame(index=codes)
    frame[C.title] = title.reindex(codes).fillna(pd.Series(codes, index=codes))
    frame[C.category] = categorise(title.reindex(codes))
    frame[C.price] = price.reindex(codes)
    frame[C.offer_type] = "product"
    return frame.reset_index()


def _customers(raw: pd.DataFrame, kept: np.ndarray) -> pd.DataFrame:
    rows = raw[kept]
    country = rows.groupby("CustomerID")["Country"].agg(lambda s: s.value_counts().index[0])
    frame = pd.DataFrame({C.country: country, C.region: country})
    return frame.rename_axis(C.customer).reset_index()
