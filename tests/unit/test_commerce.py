"""Orders from the Segment e-commerce spec v2."""

from __future__ import annotations

from datetime import UTC, datetime

from keepers.domain.commerce import order_from_event, refund_from_event

AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_revenue_prefers_revenue_then_total_then_line_items_minus_discount():
    products = [{"product_id": "a", "price": 10, "quantity": 2}, {"product_id": "b", "price": "5"}]
    with_revenue = order_from_event(
        "Order Completed", {"order_id": "1", "revenue": 19, "total": 30, "products": products}, AT
    )
    with_total = order_from_event("Order Completed", {"order_id": "1", "total": "30.5"}, AT)
    from_items = order_from_event(
        "Order Completed", {"order_id": "1", "discount": 3, "products": products}, AT
    )
    assert with_revenue.revenue == 19
    assert with_total.revenue == 30.5
    assert from_items.revenue == 10 * 2 + 5 * 1 - 3


def test_line_items_keep_their_position_and_default_quantity_one():
    order = order_from_event(
        "Completed Order",
        {
            "order_id": "7",
            "products": [
                {
                    "product_id": "a",
                    "sku": "A-1",
                    "name": "Mug",
                    "category": "Kitchen",
                    "price": 4.5,
                },
                "not a product",
                {"product_id": "b", "quantity": 3, "price": 1},
            ],
        },
        AT,
    )
    assert [(i.line_no, i.product_id, i.quantity) for i in order.items] == [
        (1, "a", 1.0),
        (3, "b", 3.0),
    ]
    assert order.items[0].category == "Kitchen"


def test_other_events_and_orders_without_id_make_no_order():
    assert order_from_event("Product Viewed", {"order_id": "1"}, AT) is None
    assert order_from_event("Order Completed", {"revenue": 3}, AT) is None


def test_refund_amount_is_total_else_revenue_else_whole_order():
    assert refund_from_event("Order Refunded", {"order_id": "1", "total": 5}, AT).amount == 5
    assert refund_from_event("Order Refunded", {"order_id": "1", "revenue": 4}, AT).amount == 4
    assert refund_from_event("Order Refunded", {"order_id": "1"}, AT).amount is None


def test_non_finite_and_non_numeric_amounts_are_ignored():
    order = order_from_event(
        "Order Completed", {"order_id": "1", "revenue": "NaN", "total": "lots"}, AT
    )
    assert order.revenue is None and order.total is None
