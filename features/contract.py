"""The input data contract: reading a dataset folder, validating it, quarantining bad rows.

Every row read ends up either kept or quarantined with a reason; nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.columns import (
    CHANNELS,
    EARLIEST,
    FEEDBACK_ACTIONS,
    LATEST,
    OFFER_TYPES,
    PURPOSES,
    Columns,
    EventType,
    Stage,
)

C = Columns

TABLES = ("events", "products", "customers", "consents", "feedback")
REQUIRED_TABLES = ("events", "products")
QUARANTINE_SUMMARY = "summary.json"  # beside the quarantined rows: counts per reason
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (C.customer, C.product, C.event_type, C.timestamp),
    "products": (C.product, C.title, C.category),
    "customers": (C.customer,),
    "consents": (C.customer, C.purpose, C.granted),
    "feedback": (C.customer, C.product, C.action, C.timestamp),
}
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (C.quantity, C.rating, C.order, C.channel),
    "products": (
        C.brand, C.price, C.margin, C.offer_type, C.lifecycle_stages, C.channels, C.valid_from,
        C.valid_to, C.stock, C.region, C.min_age, C.sensitive, C.repurchase_days,
    ),
    "customers": (
        C.signup_date, C.birth_year, C.birth_date, C.gender, C.region, C.postcode, C.country,
        C.preferred_channel,
    ),
    "consents": (C.double_opt_in, C.updated_at, C.source),
    "feedback": (C.channel, C.request_id, C.position, C.model_version),
}
EVENT_KEY = (C.customer, C.product, C.event_type, C.timestamp, C.quantity, C.rating, C.order)
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


class ContractError(ValueError):
    """The dataset cannot be used as it is; the message says what to fix."""


@dataclass
class TableReport:
    file: str
    read: int
    kept: int
    reasons: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, file: str, kept: int, bad: pd.DataFrame) -> TableReport:
        """The report of a table that kept ``kept`` rows and quarantined ``bad``."""
        return cls(file=file, read=kept + len(bad), kept=kept, reasons=counts(bad[C.reason]))

    @property
    def quarantined(self) -> int:
        return self.read - self.kept

    @property
    def bad_share(self) -> float:
        return self.quarantined / self.read if self.read else 0.0


@dataclass
class Dataset:
    """Validated tables (optional ones empty when absent) and what validation set aside."""

    events: pd.DataFrame
    products: pd.DataFrame
    customers: pd.DataFrame
    consents: pd.DataFrame
    feedback: pd.DataFrame
    reports: dict[str, TableReport]
    quarantine: dict[str, pd.DataFrame]
    files: dict[str, Path]

    def check_bad_share(self, max_bad_share: float) -> None:
        """Raise when any table has more bad rows than the configured share allows, or
        when no valid event or product is left to build from."""
        for name in ("events", "products"):
            report = self.reports[name]
            if not report.kept:
                why = (f"all {report.read:,} rows break the data contract (most common: "
                       + ", ".join(f"{r}: {n:,}" for r, n in _most_common(report.reasons, 3))
                       + "); the rows are in the quarantine files with their reasons"
                       if report.read else "it has a header and no rows")
                raise ContractError(f"{report.file}: no valid {name}: {why}.")
        for name, report in self.reports.items():
            if report.bad_share > max_bad_share:
                top = ", ".join(
                    f"{reason}: {n}" for reason, n in _most_common(report.reasons, 3)
                )
                raise ContractError(
                    f"{report.file}: {report.quarantined} of {report.read} {name} rows "
                    f"({report.bad_share:.1%}) break the data contract, more than the allowed "
                    f"{max_bad_share:.1%} (NBO_MAX_BAD_SHARE / --max-bad-share). Most common: "
                    f"{top}. The rows are in the quarantine files with their reasons."
                )

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per table: its file, the rows read, kept and quarantined, and rows per reason."""
        return {name: {"file": r.file, "read": r.read, "kept": r.kept,
                       "quarantined": r.quarantined, "reasons": r.reasons}
                for name, r in self.reports.items()}

    def write_quarantine(self, folder: Path) -> list[Path]:
        """Write one CSV per table with quarantined rows and ``summary.json``, the rows
        read, kept and quarantined per table with the count of rows per reason; return the
        quarantine files written."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / QUARANTINE_SUMMARY).write_text(json.dumps(self.summary(), indent=2) + "\n")
        written = []
        for name, frame in self.quarantine.items():
            path = folder / f"{name}.csv"
            if len(frame):
                frame.to_csv(path, index=False)
                written.append(path)
            elif path.exists():
                path.unlink()
        return written


def _most_common(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: -kv[1])[:n]


def find_table(folder: Path, name: str) -> Path | None:
    """The table's file (``NAME.parquet``, ``.csv`` or ``.csv.gz``), else its folder of part
    files (``NAME/part-*.parquet``), else None."""
    for suffix in (".parquet", ".csv", ".csv.gz"):
        path = folder / f"{name}{suffix}"
        if path.exists():
            return path
    return folder / name if part_files(folder, name) else None


def part_files(folder: Path, name: str) -> list[Path]:
    """Parts appended to a table (``nbo store export`` writes them), in name order."""
    return sorted((folder / name).glob("part-*.parquet"))


def read_table_with_parts(folder: Path, path: Path, name: str) -> pd.DataFrame:
    """The table's file and its appended parts as one frame (the parts' values as text where
    the file is CSV, so every column reads the same way)."""
    frames = [] if path.is_dir() else [read_table(path)]
    text = is_text_table(path)
    for part in part_files(folder, name):
        frame = read_table(part)
        frames.append(as_text_frame(frame) if text else frame)
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def is_text_table(path: Path) -> bool:
    """A CSV table: its values are read as text, and so are the parts appended to it."""
    return path.suffix != ".parquet" and not path.is_dir()


def as_text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A typed part's values as the text a CSV table of the same data would hold."""
    return frame.astype(object).where(frame.notna(), None).map(
        lambda v: v if v is None else _as_text(v))


def table_files(folder: Path, name: str, path: Path) -> dict[str, Path]:
    """The files a table is read from, as a dataset's ``files`` lists them."""
    return {name: path} | {f"{name}/{part.name}": part for part in part_files(folder, name)}


def _as_text(value: object) -> str:
    return value.isoformat() if isinstance(value, pd.Timestamp) else str(value)


def read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # parser errors name neither the file nor what to do
        raise ContractError(f"{path}: cannot be read as a table ({exc}).") from exc


def find_required_table(folder: Path, name: str) -> Path | None:
    """:func:`find_table`, which must find the tables the contract requires."""
    path = find_table(folder, name)
    if path is None and name in REQUIRED_TABLES:
        raise ContractError(f"{folder}: the required table '{name}' is missing "
                            f"(expected {name}.parquet or {name}.csv).")
    return path


def check_columns(path: Path, name: str, columns: pd.Index) -> None:
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in columns]
    if missing:
        raise ContractError(f"{path}: required column(s) {', '.join(missing)} missing; "
                            f"found {', '.join(map(str, columns))}.")


def load_dataset(folder: Path | str, now: pd.Timestamp | None = None) -> Dataset:
    """Read and validate every table of a dataset folder.

    ``now`` bounds plausible birth years; it defaults to the wall clock.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such dataset folder.")
    raw: dict[str, pd.DataFrame] = {}
    files: dict[str, Path] = {}
    for name in TABLES:
        path = find_required_table(folder, name)
        if path is None:
            continue
        frame = read_table_with_parts(folder, path, name)
        check_columns(path, name, frame.columns)
        raw[name] = frame
        files.update(table_files(folder, name, path))
        del frame
    return validate_tables(raw, files, now=now)


def validate_tables(
    raw: dict[str, pd.DataFrame],
    files: dict[str, Path] | None = None,
    now: pd.Timestamp | None = None,
) -> Dataset:
    """Validate tables already in memory (``raw`` must hold events and products).

    Tables are taken out of ``raw`` as they are validated, so a large raw table is freed
    as soon as its validated copy exists.
    """
    files = files or {}
    now = now if now is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    results: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    products_kept, products_bad = split_table(raw.pop("products"), "products")
    results["products"] = (products_kept, products_bad)
    known = pd.Index(products_kept[C.product].unique())
    for name in ("events", "customers", "consents", "feedback"):
        frame = raw.pop(name, None)
        if frame is None:
            frame = pd.DataFrame(columns=list(REQUIRED_COLUMNS[name]))
        results[name] = split_table(frame, name, known, now)

    reports = {name: TableReport.of(str(files.get(name, name)), len(kept), bad)
               for name, (kept, bad) in results.items()}
    return Dataset(
        events=results["events"][0],
        products=results["products"][0],
        customers=results["customers"][0],
        consents=results["consents"][0],
        feedback=results["feedback"][0],
        reports=reports,
        quarantine={name: bad for name, (_, bad) in results.items()},
        files=files,
    )


def validate_events(frame: pd.DataFrame, products: pd.Index) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The events table's rules, for events that carry their own ids (the service's
    /events): the kept rows, normalised, and the bad ones with their ``source_row`` (from 1)
    and ``reason``. ``products`` are the known product ids. Two events alike in every column
    are two events here (their ids tell them apart), not a duplicate row."""
    missing = [c for c in REQUIRED_COLUMNS["events"] if c not in frame.columns]
    if missing:
        raise ContractError(f"events: required column(s) {', '.join(missing)} missing")
    return _split(frame, lambda f: _event_reasons(f, products, duplicates=False))


Rule = Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.Series]]


def split_table(frame: pd.DataFrame, name: str, known: pd.Index | None = None,
                now: pd.Timestamp | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One table's rows split by the contract's rules: the kept rows, normalised, and the
    bad ones with their ``source_row`` (from 1, in ``frame``) and ``reason``. Events need
    the ``known`` product ids, customers the moment ``now`` that bounds birth years."""
    rules: dict[str, Rule] = {
        "products": _product_reasons,
        "events": lambda f: _event_reasons(f, _given_value(known, "known products")),
        "customers": lambda f: _customer_reasons(f, _given_value(now, "now")),
        "consents": _consent_reasons,
        "feedback": _feedback_reasons,
    }
    return _split(frame, rules[name])


def _given_value(value: Any, what: str) -> Any:
    if value is None:
        raise TypeError(f"split_table needs {what} for this table")
    return value


def _split(frame: pd.DataFrame, rule: Rule) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply a rule returning (normalised frame, reason or NA per row) and split the rows."""
    source = frame if isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 \
        else frame.reset_index(drop=True)
    normal, reason = rule(source)
    bad = reason.notna().to_numpy()
    kept = normal.loc[~bad].reset_index(drop=True) if bad.any() else normal
    quarantined = source.loc[bad].copy()
    quarantined.insert(0, C.source_row, np.flatnonzero(bad) + 1)
    quarantined.insert(1, C.reason, reason[bad].to_numpy())
    return kept, quarantined.reset_index(drop=True)


class _Reasons:
    """First failing rule wins: later checks never overwrite an earlier reason."""

    def __init__(self, n: int) -> None:
        self.values = np.full(n, None, dtype=object)

    def add(self, mask: pd.Series | np.ndarray, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & (self.values == None)  # noqa: E711
        self.values[mask] = reason

    @property
    def ok(self) -> np.ndarray:
        return self.values == None  # noqa: E711

    def series(self) -> pd.Series:
        return pd.Series(self.values, dtype=object)


# --- column normalisers -----------------------------------------------------------------


def as_id(values: pd.Series) -> pd.Series:
    """Identifiers as trimmed strings; integral floats lose their ``.0``; empty is NA."""
    if pd.api.types.is_float_dtype(values):
        whole = values.notna() & (values == values.round())
        text = values.astype(object)
        text[whole] = values[whole].astype("int64").astype(str)
        values = text
    out = _stripped(values)
    blank = values.isna() | (out == "")
    return out.where(~blank) if blank.any() else out


def as_text(values: pd.Series) -> pd.Series:
    out = _stripped(values)
    blank = values.isna() | (out == "")
    return out.where(~blank) if blank.any() else out


def _stripped(values: pd.Series) -> pd.Series:
    """Trimmed strings; a column with nothing to trim is not copied (ids of 10^7 events)."""
    text = values.astype("str")
    padded = pc.any(pc.match_substring_regex(pa.array(text), r"^\s|\s$")).as_py()
    return text.str.strip() if padded else text


def parse_timestamps(values: pd.Series) -> pd.Series:
    """ISO-8601 strings or epoch seconds to naive UTC; timezone-naive input means UTC.
    Moments before 1970 or from 2200 on (``EARLIEST``, ``LATEST``) are missing (a bad
    timestamp)."""
    return _kept(_moments(values))


def _moments(values: pd.Series) -> pd.Series:
    """Naive UTC moments at whatever resolution holds them; unparseable ones missing."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    if pd.api.types.is_numeric_dtype(values):
        return _from_epoch(values)
    text = values.astype("str").str.strip()
    epoch = pd.to_numeric(text, errors="coerce")
    iso = pd.to_datetime(text.where(epoch.isna()), format="ISO8601", utc=True,
                         errors="coerce").dt.tz_localize(None)
    if epoch.notna().any():
        return _kept(iso).where(epoch.isna(), _kept(_from_epoch(epoch)))
    return iso


def _from_epoch(seconds: pd.Series) -> pd.Series:
    """Epoch seconds as moments; those out of the kept range missing."""
    inside = seconds.between(0, (LATEST - EARLIEST).total_seconds(), inclusive="left")
    return pd.to_datetime(seconds.where(inside), unit="s", errors="coerce")


def _kept(moments: pd.Series) -> pd.Series:
    """Naive moments at nanoseconds, those outside [EARLIEST, LATEST) missing."""
    inside = (moments >= pd.Timestamp(EARLIEST)) & (moments < pd.Timestamp(LATEST))
    return moments.where(inside).astype("datetime64[ns]")


def parse_bools(values: pd.Series, default: bool) -> tuple[pd.Series, pd.Series]:
    """Booleans from bool/int/text columns; returns (values, mask of unparseable entries)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(bool), pd.Series(False, index=values.index)
    text = values.astype("str").str.strip().str.lower().where(values.notna(), "")
    text = text.str.replace(r"\.0$", "", regex=True)
    parsed = pd.Series(default, index=values.index, dtype=bool)
    parsed[text.isin(_TRUE)] = True
    parsed[text.isin(_FALSE - {""})] = False
    bad = ~text.isin(_TRUE | _FALSE)
    return parsed, bad


def _numbers(frame: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """(numeric values, mask of entries present but not numeric)."""
    if column not in frame:
        empty = pd.Series(np.nan, index=frame.index)
        return empty, pd.Series(False, index=frame.index)
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    return values.astype(float), _given(raw) & values.isna()


def _dates(values: pd.Series) -> pd.Series:
    """Calendar dates (``YYYY-MM-DD``, or the date of a moment) as midnight; others
    missing. Unlike moments they may lie before 1970."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.normalize()
    text = values.astype("str").str.strip().str[:10]
    return pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")


def _given(values: pd.Series) -> pd.Series:
    """Entries that hold something (not NA, not blank)."""
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return values.notna()
    return values.notna() & (values.astype("str").str.strip() != "")


def _optional(frame: pd.DataFrame, column: str) -> pd.Series:
    if column in frame:
        return frame[column]
    return pd.Series(pd.NA, index=frame.index, dtype=object)


def _stage_lists(values: pd.Series, allowed: tuple[str, ...]) -> tuple[pd.Series, pd.Series]:
    """``;``-separated lists, normalised (sorted, lower case); empty means all."""
    text = as_text(values).str.lower().fillna("")
    parts = text.str.split(";")
    cleaned = parts.map(lambda items: sorted({s.strip() for s in items if s.strip()}))
    bad = cleaned.map(lambda items: any(s not in allowed for s in items))
    return cleaned.map(";".join), bad


# --- per-table rules ----------------------------------------------------------------------


def _event_reasons(frame: pd.DataFrame, known: pd.Index, duplicates: bool = True
                   ) -> tuple[pd.DataFrame, pd.Series]:
    n = len(frame)
    reasons = _Reasons(n)
    customer, product = as_id(frame[C.customer]), as_id(frame[C.product])
    event_type = as_text(frame[C.event_type]).str.lower()
    timestamp = parse_timestamps(frame[C.timestamp])
    quantity, quantity_bad = _numbers(frame, C.quantity)
    rating, rating_bad = _numbers(frame, C.rating)
    is_sale = event_type.isin([EventType.purchase, EventType.return_]).to_numpy()
    is_rating = event_type.eq(EventType.rating).to_numpy(dtype=bool, na_value=False)
    rated = rating.to_numpy()
    given = quantity.fillna(1.0).to_numpy()

    reasons.add(customer.isna(), "missing customer_id")
    reasons.add(product.isna(), "missing product_id")
    reasons.add(~event_type.isin(EventType.all), "unknown event_type")
    reasons.add(timestamp.isna(), "bad timestamp")
    reasons.add(is_sale & (quantity_bad.to_numpy() | (given <= 0) | (given != np.round(given))),
                "bad quantity")
    reasons.add(is_rating & (rating_bad.to_numpy() | ~((rated >= 1) & (rated <= 5))),
                "rating out of range")
    reasons.add(~product.isin(known), "unknown product")

    columns = {
        C.customer: customer, C.product: product, C.event_type: event_type,
        C.timestamp: timestamp,
        C.quantity: pd.Series(np.where(is_sale & reasons.ok, given, 1).astype("int64"),
                              index=frame.index),
        C.rating: rating.where(is_rating),
        C.order: as_id(_optional(frame, C.order)),
        C.channel: as_text(_optional(frame, C.channel)),
    }
    columns.update((c, frame[c]) for c in frame.columns if c not in columns)
    out = pd.DataFrame(columns, index=frame.index)
    if duplicates:
        reasons.add(duplicated_rows(out, EVENT_KEY, among=reasons.ok, hashed=EVENT_KEY[:-1]),
                    "duplicate event")
    for column in (C.event_type, C.channel):  # few distinct values: categories save memory
        out[column] = out[column].astype("category")
    return out, reasons.series()


def duplicated_rows(
    frame: pd.DataFrame, columns: tuple[str, ...], among: np.ndarray,
    hashed: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Rows of ``among`` equal in ``columns`` to an earlier row of ``among``.

    A 64-bit hash over ``hashed`` (a subset of ``columns``; leaving out a costly column only
    widens the candidates) finds the candidates without copying the columns; they are then
    compared exactly on all ``columns``, so a hash collision never drops a row.
    """
    key = np.zeros(len(frame), dtype=np.uint64)
    for column in hashed or columns:
        key ^= _mix(_codes(frame[column]))
        key = _mix(key)
    rows = np.flatnonzero(among)
    maybe = rows[pd.Series(key[rows]).duplicated(keep=False).to_numpy()]
    result = np.zeros(len(frame), dtype=bool)
    if len(maybe):
        result[maybe] = frame.loc[maybe, list(columns)].duplicated().to_numpy()
    return result


def _codes(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.to_numpy().view(np.int64).astype(np.uint64)
    if pd.api.types.is_numeric_dtype(values):
        return np.nan_to_num(values.to_numpy(dtype=float), nan=-1.0).view(np.uint64)
    return pd.factorize(values)[0].astype(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole word."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _product_reasons(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    reasons = _Reasons(len(frame))
    out = frame.copy()
    out[C.product] = as_id(frame[C.product])
    out[C.title] = as_text(frame[C.title]).fillna(out[C.product])
    out[C.category] = as_text(frame[C.category]).str.lower().fillna("uncategorised")
    out[C.brand] = as_text(_optional(frame, C.brand))
    price, price_bad = _numbers(frame, C.price)
    margin, margin_bad = _numbers(frame, C.margin)
    stock, stock_bad = _numbers(frame, C.stock)
    min_age, age_bad = _numbers(frame, C.min_age)
    repurchase, repurchase_bad = _numbers(frame, C.repurchase_days)
    offer_type = as_text(_optional(frame, C.offer_type)).str.lower().fillna("product")
    stages, stages_bad = _stage_lists(_optional(frame, C.lifecycle_stages), Stage.all)
    channels, channels_bad = _stage_lists(_optional(frame, C.channels), CHANNELS)
    valid_from = parse_timestamps(_optional(frame, C.valid_from))
    until = _moments(_optional(frame, C.valid_to))
    open_ended = until >= pd.Timestamp(LATEST)  # 9999-12-31 and the like: no end
    valid_to = _kept(until)
    sensitive, sensitive_bad = parse_bools(_optional(frame, C.sensitive), default=False)

    reasons.add(out[C.product].isna(), "missing product_id")
    reasons.add(out[C.product].duplicated(), "duplicate product_id")
    reasons.add(price_bad | (price < 0), "bad price")
    reasons.add(margin_bad, "bad margin")
    reasons.add(~offer_type.isin(OFFER_TYPES), "unknown offer_type")
    reasons.add(stages_bad, "unknown lifecycle stage")
    reasons.add(channels_bad, "unknown channel")
    reasons.add(
        (_given(_optional(frame, C.valid_from)) & valid_from.isna())
        | (_given(_optional(frame, C.valid_to)) & valid_to.isna() & ~open_ended),
        "bad validity date",
    )
    reasons.add(valid_to < valid_from, "validity window ends before it starts")
    reasons.add(stock_bad | (stock < 0) | (stock.notna() & (stock != stock.round())), "bad stock")
    reasons.add(age_bad | (min_age < 0) | (min_age > 120), "bad min_age")
    reasons.add(sensitive_bad, "bad sensitive flag")
    reasons.add(repurchase_bad | (repurchase <= 0), "bad repurchase_days")

    out[C.price] = price
    out[C.margin] = margin
    out[C.offer_type] = offer_type
    out[C.lifecycle_stages] = stages
    out[C.channels] = channels
    out[C.valid_from] = valid_from
    out[C.valid_to] = valid_to
    out[C.stock] = stock.astype("Int64") if not stock_bad.any() else stock
    out[C.region] = as_text(_optional(frame, C.region))
    out[C.min_age] = min_age
    out[C.sensitive] = sensitive
    out[C.repurchase_days] = repurchase
    return out, reasons.series()


def _customer_reasons(frame: pd.DataFrame, now: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    reasons = _Reasons(len(frame))
    out = frame.copy()
    out[C.customer] = as_id(frame[C.customer])
    signup = parse_timestamps(_optional(frame, C.signup_date))
    birth_year, birth_bad = _numbers(frame, C.birth_year)
    born = _dates(_optional(frame, C.birth_date))
    born = born.where((born >= pd.Timestamp("1900-01-01")) & (born <= now))
    reasons.add(out[C.customer].isna(), "missing customer_id")
    reasons.add(out[C.customer].duplicated(), "duplicate customer_id")
    reasons.add(_given(_optional(frame, C.signup_date)) & signup.isna(), "bad signup_date")
    reasons.add(birth_bad | (birth_year < 1900) | (birth_year > now.year), "bad birth_year")
    reasons.add(_given(_optional(frame, C.birth_date)) & born.isna(), "bad birth_date")
    reasons.add(birth_year.notna() & born.notna() & (birth_year != born.dt.year),
                "birth_date and birth_year disagree")
    out[C.signup_date] = signup
    out[C.birth_year] = birth_year.fillna(born.dt.year.astype(float))
    out[C.birth_date] = born
    for column in (C.gender, C.region, C.postcode, C.country, C.preferred_channel):
        out[column] = as_text(_optional(frame, column))
    return out, reasons.series()


def _consent_reasons(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    reasons = _Reasons(len(frame))
    out = frame.copy()
    out[C.customer] = as_id(frame[C.customer])
    out[C.purpose] = as_text(frame[C.purpose]).str.lower()
    granted, granted_bad = parse_bools(frame[C.granted], default=False)
    double_opt_in, doi_bad = parse_bools(_optional(frame, C.double_opt_in), default=False)
    updated = parse_timestamps(_optional(frame, C.updated_at))
    reasons.add(out[C.customer].isna(), "missing customer_id")
    reasons.add(~out[C.purpose].isin(PURPOSES), "unknown purpose")
    reasons.add(granted_bad | frame[C.granted].isna(), "bad granted flag")
    reasons.add(doi_bad, "bad double_opt_in flag")
    reasons.add(_given(_optional(frame, C.updated_at)) & updated.isna(), "bad updated_at")
    out[C.granted] = granted
    out[C.double_opt_in] = double_opt_in
    out[C.updated_at] = updated
    out[C.source] = as_text(_optional(frame, C.source))
    return out, reasons.series()


def _feedback_reasons(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    reasons = _Reasons(len(frame))
    out = frame.copy()
    out[C.customer] = as_id(frame[C.customer])
    out[C.product] = as_id(frame[C.product])
    out[C.action] = as_text(frame[C.action]).str.lower()
    out[C.timestamp] = parse_timestamps(frame[C.timestamp])
    position, position_bad = _numbers(frame, C.position)
    reasons.add(out[C.customer].isna(), "missing customer_id")
    reasons.add(out[C.product].isna(), "missing product_id")
    reasons.add(~out[C.action].isin(FEEDBACK_ACTIONS), "unknown action")
    reasons.add(out[C.timestamp].isna(), "bad timestamp")
    reasons.add(position_bad | (position < 0), "bad position")
    out[C.position] = position
    for column in (C.channel, C.request_id, C.model_version):
        out[column] = as_text(_optional(frame, column))
    return out, reasons.series()


def counts(values: pd.Series) -> dict[str, int]:
    """How often each value occurs, most frequent first."""
    return {str(value): int(n) for value, n in values.value_counts().items()}
