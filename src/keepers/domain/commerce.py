"""Orders and line items from the Segment e-commerce spec v2 (pure).

`Order Completed` (v1 alias `Completed Order`) becomes an order row with its products as
line items; `Order Refunded` (v1 `Refunded Order`) marks it refunded. Revenue follows the
spec's own convention: `revenue` (after discounts, before shipping and tax), else `total`,
else the sum of price × quantity minus `discount`. Amounts may arrive as strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

ORDER_COMPLETED = frozenset({"Order Completed", "Completed Order"})
ORDER_REFUNDED = frozenset({"Order Refunded", "Refunded Order"})


@dataclass(slots=True)
class LineItem:
    order_id: str
    line_no: int
    product_id: str | None
    sku: str | None
    name: str | None
    category: str | None
    brand: str | None
    price: float | None
    quantity: float


@dataclass(slots=True)
class Order:
    order_id: str
    ordered_at: datetime
    revenue: float | None
    total: float | None
    discount: float | None
    shipping: float | None
    tax: float | None
    currency: str | None
    coupon: str | None
    items: list[LineItem]


@dataclass(slots=True)
class Refund:
    order_id: str
    refunded_at: datetime
    amount: float | None


def number(value: Any) -> float | None:
    """A finite float from a JSON number or numeric string; anything else is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def _text(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    text = str(value)
    return None if "\x00" in text else text[:1024]


def _items(order_id: str, products: Any) -> list[LineItem]:
    if not isinstance(products, list):
        return []
    items = []
    for position, product in enumerate(products, start=1):
        if not isinstance(product, dict):
            continue
        quantity = number(product.get("quantity"))
        items.append(
            LineItem(
                order_id=order_id,
                line_no=position,
                product_id=_text(product.get("product_id")),
                sku=_text(product.get("sku")),
                name=_text(product.get("name")),
                category=_text(product.get("category")),
                brand=_text(product.get("brand")),
                price=number(product.get("price")),
                quantity=1.0 if quantity is None else quantity,
            )
        )
    return items


def order_revenue(properties: dict[str, Any], items: list[LineItem]) -> float | None:
    """`revenue`, else `total`, else Σ price × quantity − discount (spec v2 convention)."""
    for field in ("revenue", "total"):
        value = number(properties.get(field))
        if value is not None:
            return value
    priced = [item.price * item.quantity for item in items if item.price is not None]
    if not priced:
        return None
    return sum(priced) - (number(properties.get("discount")) or 0.0)


def order_from_event(
    name: str | None, properties: dict[str, Any] | None, at: datetime
) -> Order | None:
    """An order when the event is `Order Completed` with an `order_id`; else None."""
    if name not in ORDER_COMPLETED or not properties:
        return None
    order_id = _text(properties.get("order_id"))
    if order_id is None:
        return None
    items = _items(order_id, properties.get("products"))
    return Order(
        order_id=order_id,
        ordered_at=at,
        revenue=order_revenue(properties, items),
        total=number(properties.get("total")),
        discount=number(properties.get("discount")),
        shipping=number(properties.get("shipping")),
        tax=number(properties.get("tax")),
        currency=_text(properties.get("currency")),
        coupon=_text(properties.get("coupon")),
        items=items,
    )


def refund_from_event(
    name: str | None, properties: dict[str, Any] | None, at: datetime
) -> Refund | None:
    """A refund when the event is `Order Refunded` with an `order_id`; amount None = whole."""
    if name not in ORDER_REFUNDED or not properties:
        return None
    order_id = _text(properties.get("order_id"))
    if order_id is None:
        return None
    amount = number(properties.get("total"))
    if amount is None:
        amount = number(properties.get("revenue"))
    return Refund(order_id=order_id, refunded_at=at, amount=amount)
