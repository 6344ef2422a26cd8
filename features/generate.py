"""A seeded generator of a shop in the data contract, with structure a model can learn.

Every customer has a hidden taste: a mix of categories drawn around a persona, and within each
category a preferred style. Products have a category, a style and a popularity. A customer views
products of the categories they like, close to their style; the closer, the likelier a cart, a
purchase and a high rating, and the less likely a return. Popularity alone therefore ranks well
but not best. Customers are written in chunks, so millions of them stream to disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.columns import Columns as C

# name, base price, repurchase days (0: never), sensitive, minimum age, nouns
CATEGORIES: tuple[tuple[str, float, int, bool, int, tuple[str, ...]], ...] = (
    ("kitchen", 25.0, 0, False, 0, ("pan", "knife set", "teapot", "bowl", "grinder")),
    ("garden", 40.0, 0, False, 0, ("planter", "hose", "seed kit", "shears", "lantern")),
    ("toys", 20.0, 0, False, 0, ("puzzle", "building set", "plush bear", "kite", "robot")),
    ("books", 15.0, 0, False, 0, ("novel", "cookbook", "atlas", "biography", "thriller")),
    ("fashion", 45.0, 0, False, 0, ("scarf", "jacket", "sneakers", "belt", "dress")),
    ("beauty", 18.0, 45, False, 0, ("face cream", "shampoo", "perfume", "lip balm", "serum")),
    ("sports", 50.0, 0, False, 0, ("yoga mat", "dumbbells", "bike light", "tent", "racket")),
    ("electronics", 120.0, 0, False, 0, ("headphones", "speaker", "charger", "e-reader", "lamp")),
    ("pets", 22.0, 30, False, 0, ("dog food", "cat toy", "pet bed", "leash", "litter")),
    ("wine", 14.0, 30, False, 18, ("red wine", "white wine", "rose", "sparkling", "port")),
    ("baby", 25.0, 60, True, 0, ("nappies", "baby bottle", "pram toy", "bib set", "romper")),
    ("health", 15.0, 60, True, 0, ("vitamins", "test kit", "knee brace", "sleep aid", "tea")),
)
ADJECTIVES = ("classic", "modern", "rustic", "compact", "deluxe", "eco", "vintage", "smart")
BRANDS = ("Alder", "Brixton", "Corva", "Dunmore", "Elm & Co", "Fenwick", "Galloway", "Harlow")
PERSONAS: dict[str, dict[str, float]] = {
    "home cook": {"kitchen": 5, "wine": 2, "garden": 1, "books": 1},
    "young family": {"toys": 4, "baby": 4, "kitchen": 1.5, "fashion": 1},
    "gadget fan": {"electronics": 5, "sports": 1.5, "books": 1},
    "style seeker": {"fashion": 5, "beauty": 4},
    "outdoor type": {"garden": 3, "sports": 4, "pets": 2},
    "bookworm": {"books": 5, "health": 1, "kitchen": 1},
    "pet parent": {"pets": 5, "garden": 2, "health": 1},
}
REGIONS = ("capital", "north", "south", "east", "west")
REGION_WEIGHTS = (0.3, 0.2, 0.2, 0.15, 0.15)
STYLE_WIDTH = 0.15  # how sharply affinity falls with style distance
CANDIDATES_PER_VIEW = 6


@dataclass(frozen=True)
class ShopSpec:
    customers: int = 500
    seed: int = 42
    end: datetime = datetime(2026, 6, 30)
    days: int = 730
    products: int | None = None  # default scales with customers
    chunk_customers: int = 50_000
    file_format: str = "parquet"
    # a shop that only learns what its customers rated (a review or streaming site): each
    # thing taken is rated 1 to 5 by how well it fits, nothing else is recorded
    ratings_only: bool = False

    @property
    def n_products(self) -> int:
        return self.products or int(np.clip(self.customers // 3, 240, 20_000))

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass
class Catalogue:
    frame: pd.DataFrame
    category: np.ndarray  # category index per product row (offers excluded)
    style: np.ndarray
    cum_popularity: np.ndarray  # category index + normalised cumulative popularity
    region: np.ndarray  # region index or -1
    min_age: np.ndarray


def generate_shop(
    spec: ShopSpec, out: Path, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Write products, customers, consents and events to ``out``; return row counts."""
    if spec.customers < 1:
        raise ValueError("a shop needs at least one customer")
    if spec.file_format not in ("parquet", "csv"):
        raise ValueError(f"unknown file format {spec.file_format!r}: use parquet or csv")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    catalogue = _catalogue(spec, rng)
    _write(catalogue.frame, out / f"products.{spec.file_format}")
    counts = {"products": len(catalogue.frame), "customers": 0, "consents": 0, "events": 0}
    with _EventWriter(out / f"events.{spec.file_format}") as events:
        customers_parts, consents_parts = [], []
        for start in range(0, spec.customers, spec.chunk_customers):
            size = min(spec.chunk_customers, spec.customers - start)
            chunk_rng = np.random.default_rng([spec.seed, start])
            people = _customers(spec, start, size, chunk_rng)
            customers_parts.append(people.drop(columns=_HIDDEN))
            consents_parts.append(_consents(spec, people, chunk_rng))
            frame = _events(spec, catalogue, people, chunk_rng)
            events.write(frame)
            counts["events"] += len(frame)
            if progress:
                progress(size)
    customers = pd.concat(customers_parts, ignore_index=True)
    consents = pd.concat(consents_parts, ignore_index=True)
    _write(customers, out / f"customers.{spec.file_format}")
    _write(consents, out / f"consents.{spec.file_format}")
    counts["customers"], counts["consents"] = len(customers), len(consents)
    meta = {"generator": "nbo", **asdict(spec), "end": spec.end.isoformat(), "rows": counts}
    (out / "shop.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


@dataclass(frozen=True)
class Tastes:
    """What a generated shop's customers like, which its files do not show: for a response
    simulator. Per customer (``customers``) a weight per category and a preferred style per
    category; per product (``products``) its category (-1 for coupons, services and
    content) and style."""

    customers: np.ndarray
    taste: np.ndarray  # customers x categories, rows sum to 1
    style_pref: np.ndarray  # customers x categories
    products: np.ndarray
    category: np.ndarray
    style: np.ndarray

    def affinity(self, rows: np.ndarray, products: np.ndarray) -> np.ndarray:
        """How much customer ``rows[i]`` likes product ``products[i]``, 0 to 1: the taste
        for its category (relative to the customer's favourite) times the closeness of its
        style to the one they prefer there; 0 for products of no category."""
        category = self.category[products]
        known = category >= 0
        cat = np.where(known, category, 0)
        share = self.taste[rows, cat] / self.taste[rows].max(axis=1)
        close = np.exp(-np.abs(self.style[products] - self.style_pref[rows, cat]) / STYLE_WIDTH)
        return np.where(known, share * close, 0.0)


def hidden_tastes(shop: Path) -> Tastes:
    """The hidden tastes of a shop this generator wrote to ``shop``, drawn again from the
    spec in its ``shop.json`` (the same seed gives the same customers and catalogue)."""
    meta_file = shop / "shop.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{shop}: no shop.json; only a shop 'nbo generate' wrote has "
                                "hidden tastes")
    meta = json.loads(meta_file.read_text())
    fields = {k: meta[k] for k in ("customers", "seed", "days", "products",
                                   "chunk_customers", "file_format")}
    spec = ShopSpec(**fields, end=datetime.fromisoformat(meta["end"]))
    catalogue = _catalogue(spec, np.random.default_rng(spec.seed))
    parts = [_customers(spec, start, min(spec.chunk_customers, spec.customers - start),
                        np.random.default_rng([spec.seed, start]))
             for start in range(0, spec.customers, spec.chunk_customers)]
    people = pd.concat(parts, ignore_index=True)
    n = len(catalogue.category)
    specials = len(catalogue.frame) - n
    return Tastes(people[C.customer].to_numpy(dtype=str), np.vstack(list(people["taste"])),
                  np.vstack(list(people["style_pref"])),
                  catalogue.frame[C.product].to_numpy(dtype=str),
                  np.concatenate([catalogue.category, np.full(specials, -1)]),
                  np.concatenate([catalogue.style, np.zeros(specials)]))


def nullable_ints(values: np.ndarray, valid: np.ndarray) -> pd.arrays.IntegerArray:
    """Integers with a missing value wherever ``valid`` is False."""
    return pd.arrays.IntegerArray(np.where(valid, values, 0).astype(np.int64), ~valid)


def _write(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


class _EventWriter:
    """Appends event chunks to one Parquet or CSV file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.started = False

    def __enter__(self) -> _EventWriter:
        if self.path.exists():
            self.path.unlink()
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.path.suffix == ".csv":
            frame.to_csv(self.path, mode="a", header=not self.started, index=False)
        else:
            table = pa.Table.from_pandas(frame, schema=_EVENT_SCHEMA, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, _EVENT_SCHEMA)
            self.writer.write_table(table)
        self.started = True

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
        elif not self.started:
            _write(pd.DataFrame(columns=_EVENT_SCHEMA.names), self.path)


_EVENT_SCHEMA = pa.schema([
    (C.customer, pa.string()),
    (C.product, pa.string()),
    (C.event_type, pa.string()),
    (C.timestamp, pa.timestamp("s")),
    (C.quantity, pa.int32()),
    (C.rating, pa.float32()),
    (C.order, pa.string()),
    (C.channel, pa.string()),
])
_HIDDEN = ["persona", "taste", "style_pref", "active_from", "active_to", "rate", "buyer", "age"]


# --- catalogue ----------------------------------------------------------------------------


def _catalogue(spec: ShopSpec, rng: np.random.Generator) -> Catalogue:
    n = spec.n_products
    n_cat = len(CATEGORIES)
    category = np.sort(rng.integers(0, n_cat, n))
    category[:n_cat] = np.arange(n_cat)  # every category has products
    category = np.sort(category)
    style = rng.random(n)
    popularity = rng.lognormal(0.0, 1.2, n)
    cum = np.zeros(n)
    for c in range(n_cat):
        block = category == c
        cum[block] = c + np.cumsum(popularity[block]) / popularity[block].sum()
    base = np.array([cat[1] for cat in CATEGORIES])[category]
    price = np.round(base * rng.lognormal(0.0, 0.5, n), 2)
    region = np.where(rng.random(n) < 0.05, rng.integers(0, len(REGIONS), n), -1)
    min_age = np.array([cat[4] for cat in CATEGORIES])[category]
    stock = np.where(rng.random(n) < 0.6, rng.integers(5, 500, n), -1)
    stock[rng.random(n) < 0.03] = 0
    end = pd.Timestamp(spec.end)
    valid_to = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]")
    expired = rng.random(n) < 0.03
    valid_to[expired] = end - pd.to_timedelta(rng.integers(10, 200, expired.sum()), unit="D")
    channels = np.where(rng.random(n) < 0.05, "web;app", "")
    nouns = [CATEGORIES[c][5][i] for c, i in zip(category, rng.integers(0, 5, n), strict=True)]
    adjectives = np.array(ADJECTIVES)[rng.integers(0, len(ADJECTIVES), n)]
    brands = np.array(BRANDS)[rng.integers(0, len(BRANDS), n)]
    region_names = np.array(REGIONS, dtype=object)[np.maximum(region, 0)]
    region_names[region < 0] = None
    frame = pd.DataFrame({
        C.product: [f"p{i:05d}" for i in range(n)],
        C.title: [f"{a.capitalize()} {w}" for a, w in zip(adjectives, nouns, strict=True)],
        C.category: np.array([cat[0] for cat in CATEGORIES])[category],
        C.brand: brands,
        C.price: price,
        C.margin: np.round(rng.uniform(0.1, 0.5, n), 2),
        C.offer_type: "product",
        C.lifecycle_stages: "",
        C.channels: channels,
        C.valid_from: pd.NaT,
        C.valid_to: valid_to,
        C.stock: nullable_ints(stock, stock >= 0),
        C.region: region_names,
        C.min_age: nullable_ints(min_age, min_age > 0),
        C.sensitive: np.array([cat[3] for cat in CATEGORIES])[category],
        C.repurchase_days: pd.array(
            np.array([cat[2] or -1 for cat in CATEGORIES])[category], dtype="Int64"
        ),
    })
    frame.loc[frame[C.repurchase_days] < 0, C.repurchase_days] = pd.NA
    frame = pd.concat([frame, _special_offers(end)], ignore_index=True)
    return Catalogue(frame, category, style, cum, region, min_age)


def _special_offers(end: pd.Timestamp) -> pd.DataFrame:
    """Coupons for lifecycle stages, services and content, which no one has bought yet."""
    rows = [
        ("welcome10", "Welcome: 10% off your first order", "coupon", "prospect;new", ""),
        ("winback15", "We miss you: 15% off", "coupon", "at_risk;lapsed", ""),
        ("loyal5", "Thank you: free delivery for a month", "coupon", "active", ""),
        ("warranty", "Two-year extended warranty", "service", "", ""),
        ("giftwrap", "Gift wrapping service", "service", "", "web;app"),
        ("guide-garden", "Spring gardening guide", "content", "", ""),
        ("summer-sale", "Summer sale preview", "coupon", "", "email;app;push"),
    ]
    frame = pd.DataFrame(rows, columns=[C.product, C.title, C.offer_type, C.lifecycle_stages,
                                        C.channels])
    frame[C.category] = frame[C.offer_type].map(
        {"coupon": "coupons", "service": "services", "content": "content"}
    )
    frame[C.price] = 0.0
    frame[C.valid_from] = pd.NaT
    frame[C.valid_to] = pd.NaT
    frame.loc[frame[C.product] == "summer-sale", C.valid_from] = end + pd.Timedelta(days=20)
    return frame


# --- customers ----------------------------------------------------------------------------


def _customers(spec: ShopSpec, first: int, size: int, rng: np.random.Generator) -> pd.DataFrame:
    names = list(PERSONAS)
    categories = [cat[0] for cat in CATEGORIES]
    profiles = np.array([[PERSONAS[p].get(c, 0.05) for c in categories] for p in names])
    persona = rng.integers(0, len(names), size)
    taste = np.vstack([rng.dirichlet(profiles[p] * 1.5) for p in persona])
    start, days = pd.Timestamp(spec.start), spec.days
    signup = start + pd.to_timedelta(days * rng.beta(1.6, 1.0, size), unit="D")
    seconds = (pd.Timestamp(spec.end) - signup).total_seconds().to_numpy()
    churned = rng.random(size) < 0.3
    active_to = signup + pd.to_timedelta(
        np.where(churned, seconds * rng.random(size), seconds), unit="s"
    )
    birth_year = rng.integers(1945, 2008, size).astype(float)
    birth_year[rng.random(size) < 0.1] = np.nan
    region = np.array(REGIONS)[rng.choice(len(REGIONS), size, p=REGION_WEIGHTS)]
    ids = np.arange(first, first + size)
    day_of_year = np.random.default_rng([spec.seed, first, 366]).integers(0, 365, size)
    born = (pd.to_datetime(pd.Series(birth_year).astype("Int64").astype("string") + "-01-01",
                           errors="coerce") + pd.to_timedelta(day_of_year, unit="D"))
    return pd.DataFrame({
        C.customer: [f"c{i:07d}" for i in ids],
        C.signup_date: signup.floor("s"),
        C.birth_year: nullable_ints(birth_year, ~np.isnan(birth_year)),
        C.birth_date: born.dt.strftime("%Y-%m-%d").to_numpy(dtype=object),
        C.gender: np.array(["f", "m", "d", ""])[rng.choice(4, size, p=[0.48, 0.44, 0.02, 0.06])],
        C.region: region,
        C.postcode: [f"{r[0].upper()}{n:04d}" for r, n in
                     zip(region, rng.integers(0, 10_000, size), strict=True)],
        C.country: "GB",
        C.preferred_channel: np.array(["email", "app", "web", "sms"])[
            rng.choice(4, size, p=[0.45, 0.25, 0.2, 0.1])
        ],
        "persona": np.array(names)[persona],
        "taste": list(taste),
        "style_pref": list(rng.random((size, len(CATEGORIES)))),
        "active_from": signup,
        "active_to": active_to,
        "rate": rng.lognormal(np.log(0.8), 0.6, size),  # visits per 30 active days
        "buyer": rng.random(size) >= 0.1,  # prospects browse but never buy
        "age": pd.Timestamp(spec.end).year - birth_year,
    })


def _consents(spec: ShopSpec, people: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Consent records with the gaps real shops have: missing, refused, no double opt-in."""
    size = len(people)
    # purpose: (share with a record, share granted among those, share double opt-in if granted)
    plan = {
        "personalization": (0.92, 0.92, 0.0),
        "email": (0.7, 0.85, 0.8),
        "sms": (0.4, 0.5, 0.0),
        "push": (0.5, 0.6, 0.0),
        "post": (0.5, 0.8, 0.0),
        "sensitive": (0.3, 0.4, 0.0),
    }
    parts = []
    for purpose, (recorded, granted_share, doi_share) in plan.items():
        has = rng.random(size) < recorded
        granted = rng.random(size) < granted_share
        doi = granted & (rng.random(size) < doi_share)
        updated = people[C.signup_date] + pd.to_timedelta(rng.integers(0, 90, size), unit="D")
        parts.append(pd.DataFrame({
            C.customer: people[C.customer].to_numpy()[has],
            C.purpose: purpose,
            C.granted: granted[has],
            C.double_opt_in: doi[has],
            C.updated_at: updated.to_numpy()[has],
            C.source: np.where(rng.random(has.sum()) < 0.7, "signup", "preference_center"),
        }))
    return pd.concat(parts, ignore_index=True)


# --- events -------------------------------------------------------------------------------


def _events(
    spec: ShopSpec, cat: Catalogue, people: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """All events of one chunk of customers, vectorised over sessions and views."""
    end = pd.Timestamp(spec.end)
    active_from = people["active_from"].to_numpy("datetime64[s]").astype(np.int64)
    active_to = people["active_to"].to_numpy("datetime64[s]").astype(np.int64)
    span_days = (active_to - active_from) / 86_400
    n_sessions = np.minimum(rng.poisson(people["rate"].to_numpy() * span_days / 30 + 0.5), 300)
    who = np.repeat(np.arange(len(people)), n_sessions)
    if len(who) == 0:
        return pd.DataFrame(columns=_EVENT_SCHEMA.names)
    session_time = active_from[who] + (rng.random(len(who)) * (active_to - active_from)[who])
    session_id = np.arange(len(who))

    views_per_session = 1 + rng.poisson(1.2, len(who))
    view_session = np.repeat(session_id, views_per_session)
    view_who = who[view_session]
    product, affinity = _pick_products(cat, people, view_who, rng)
    first_view = np.repeat(np.cumsum(views_per_session) - views_per_session, views_per_session)
    step = np.arange(len(view_session)) - first_view  # distinct seconds within a session
    view_time = session_time[view_session] + step * 120 + rng.integers(0, 100, len(step))

    age = people["age"].to_numpy()[view_who]
    allowed = people["buyer"].to_numpy()[view_who]
    region_idx = pd.Index(REGIONS).get_indexer(pd.Index(people[C.region].to_numpy()[view_who]))
    allowed &= (cat.region[product] < 0) | (cat.region[product] == region_idx)
    allowed &= (cat.min_age[product] == 0) | (np.nan_to_num(age, nan=0) >= cat.min_age[product])
    bought = allowed & (rng.random(len(product)) < 0.03 + 0.4 * affinity**2)
    carted = bought | (allowed & (rng.random(len(product)) < 0.12 * affinity))
    wished = rng.random(len(product)) < 0.06 * affinity
    quantity = 1 + rng.poisson(0.3, len(product))

    parts = [
        _frame(view_who, product, "view", view_time),
        _frame(view_who[carted], product[carted], "cart", view_time[carted] + 60),
        _frame(view_who[wished], product[wished], "wishlist", view_time[wished] + 30),
    ]
    order = np.char.add(f"o{spec.seed}-", view_session.astype(str))
    buy = _frame(view_who[bought], product[bought], "purchase", view_time[bought] + 600,
                 quantity[bought], order=order[bought])
    parts.append(buy)
    aff_bought = affinity[bought]
    returned = rng.random(len(aff_bought)) < 0.03 + 0.45 * (1 - aff_bought) ** 3
    return_time = view_time[bought][returned] + rng.integers(1, 20, returned.sum()) * 86_400
    parts.append(_frame(view_who[bought][returned], product[bought][returned], "return",
                        return_time, quantity[bought][returned], order=order[bought][returned]))
    rated = rng.random(len(aff_bought)) < 0.25
    stars = np.clip(np.round(1 + 4 * aff_bought + rng.normal(0, 0.7, len(aff_bought))), 1, 5)
    stars = np.where(returned, np.minimum(stars, 2), stars)
    rating_time = view_time[bought][rated] + rng.integers(2, 15, rated.sum()) * 86_400
    parts.append(_frame(view_who[bought][rated], product[bought][rated], "rating", rating_time,
                        rating=stars[rated]))
    if spec.ratings_only:  # the same draws as a full shop, every taken thing rated
        parts = [_frame(view_who[bought], product[bought], "rating",
                        view_time[bought] + 2 * 86_400, rating=stars)]
    events = pd.concat(parts, ignore_index=True)
    events = events[events[C.timestamp] <= np.datetime64(end, "s").astype(np.int64)]
    events[C.customer] = people[C.customer].to_numpy()[events.pop("who").to_numpy()]
    events[C.product] = cat.frame[C.product].to_numpy()[events[C.product].to_numpy()]
    events[C.timestamp] = events[C.timestamp].to_numpy().astype("datetime64[s]")
    events[C.channel] = np.array(["web", "app"])[rng.integers(0, 2, len(events))]
    events = events.sort_values([C.timestamp, C.customer], kind="stable")
    return events[_EVENT_SCHEMA.names].reset_index(drop=True)


def _frame(who: np.ndarray, product: np.ndarray, kind: str, time: np.ndarray,
           quantity: np.ndarray | None = None, rating: np.ndarray | None = None,
           order: np.ndarray | None = None) -> pd.DataFrame:
    n = len(who)
    return pd.DataFrame({
        "who": who,
        C.product: product,
        C.event_type: kind,
        C.timestamp: time.astype(np.int64),
        C.quantity: quantity if quantity is not None else np.ones(n, dtype=np.int64),
        C.rating: rating if rating is not None else np.full(n, np.nan),
        C.order: order if order is not None else np.full(n, None, dtype=object),
    })


def _pick_products(
    cat: Catalogue, people: pd.DataFrame, who: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each view: a category from the customer's taste, then among a few popular
    products of that category the one closest to the customer's style (with noise)."""
    taste = np.vstack(list(people["taste"]))
    style_pref = np.vstack(list(people["style_pref"]))
    cum_taste = np.cumsum(taste, axis=1)
    u = rng.random(len(who))
    category = (cum_taste[who] < u[:, None]).sum(axis=1).clip(0, taste.shape[1] - 1)
    draws = category[:, None] + rng.random((len(who), CANDIDATES_PER_VIEW))
    candidates = np.searchsorted(cat.cum_popularity, draws).clip(0, len(cat.style) - 1)
    distance = np.abs(cat.style[candidates] - style_pref[who, category][:, None])
    affinity = np.exp(-distance / STYLE_WIDTH)
    noisy = np.log(affinity + 1e-9) + rng.gumbel(0, 0.5, affinity.shape)
    best = noisy.argmax(axis=1)
    rows = np.arange(len(who))
    return candidates[rows, best], affinity[rows, best]

