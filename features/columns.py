"""Column names shared by every DataFrame that crosses a module boundary."""

from __future__ import annotations

from datetime import datetime


class Columns:
    customer = "customer_id"
    product = "product_id"
    event_type = "event_type"
    timestamp = "timestamp"
    quantity = "quantity"
    rating = "rating"
    order = "order_id"
    channel = "channel"

    title = "title"
    category = "category"
    brand = "brand"
    price = "price"
    margin = "margin"
    offer_type = "offer_type"
    lifecycle_stages = "lifecycle_stages"
    channels = "channels"
    valid_from = "valid_from"
    valid_to = "valid_to"
    stock = "stock"
    region = "region"
    min_age = "min_age"
    sensitive = "sensitive"
    repurchase_days = "repurchase_days"

    signup_date = "signup_date"
    birth_year = "birth_year"
    birth_date = "birth_date"
    gender = "gender"
    postcode = "postcode"
    country = "country"
    preferred_channel = "preferred_channel"

    purpose = "purpose"
    granted = "granted"
    double_opt_in = "double_opt_in"
    updated_at = "updated_at"
    source = "source"

    action = "action"
    request_id = "request_id"
    position = "position"
    model_version = "model_version"

    weight = "weight"
    reason = "reason"
    source_row = "source_row"


class EventType:
    purchase = "purchase"
    return_ = "return"
    wishlist = "wishlist"
    rating = "rating"
    cart = "cart"
    view = "view"
    all = ("purchase", "return", "wishlist", "rating", "cart", "view")


class Stage:
    prospect = "prospect"
    new = "new"
    active = "active"
    at_risk = "at_risk"
    lapsed = "lapsed"
    all = ("prospect", "new", "active", "at_risk", "lapsed")


CHANNELS = ("web", "app", "email", "sms", "push", "post")
MESSAGING_CHANNELS = ("email", "sms", "push", "post")
PURPOSES = ("personalization", "email", "sms", "push", "post", "sensitive")
OFFER_TYPES = ("product", "coupon", "service", "content")
FEEDBACK_ACTIONS = ("impression", "click", "conversion", "dismiss")
# the moments nbo keeps (UTC): timestamps are nanoseconds since 1970, which hold until 2262
EARLIEST, LATEST = datetime(1970, 1, 1), datetime(2200, 1, 1)
