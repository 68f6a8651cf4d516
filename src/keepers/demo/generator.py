"""A seeded, deterministic demo web shop (plus a small B2B side) as Segment-spec messages.

Why this exists: Keepers' analytics — lifecycle stages, churn and reactivation, cohorts, RFM,
BG/NBD + Gamma-Gamma CLV, personas, co-purchase affinity, replenishment cycles, NPS and
referrals — need data with real structure in it to find. Each simulated person therefore has
latent, per-person parameters (purchase rate, dropout probability, spend level, satisfaction,
email affinity, favourite categories) and a life that follows from them:

- Visitors arrive through an acquisition channel; channels differ in sign-up, conversion and
  retention. Sign-ups grow over time (a growing business). Some visitors never sign up.
- Anonymous browsing (``anonymousId`` only) precedes an ``identify`` carrying both ids, which is
  how the anonymous history merges into the customer.
- Purchases follow a BTYD-like process: gamma-distributed purchase rates, a dropout chance
  after every order (BG/NBD-like) and a per-person spend level (Gamma-Gamma-like), so one-time
  buyers, repeat buyers and customers who quietly stop all exist; some come back much later.
- Consumables (coffee, pet food, vitamins, lenses …) are re-ordered at a regular per-customer
  interval until the customer stops; companion products (camera + memory card …) are bought
  together, so affinity exists.
- Carts are abandoned, orders refunded, emails opened less by the disengaged, NPS scores follow
  satisfaction, happy customers refer friends, and B2B accounts run trials and sales deals.

Everything comes from one ``random.Random(seed)``, with no I/O and no clock reads except the
default ``end``; the same ``(customers, seed, end, years)`` yields byte-identical messages.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["DemoCatalog", "Product", "default_catalog", "generate"]

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SITE = "https://shop.keepers-demo.com"
APP = "https://app.keepers-demo.io"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EUR_RATE = 0.92
_MAX_REFERRAL_DEPTH = 6

Message = dict[str, Any]
Timed = tuple[int, int, Message]  # (epoch ms, insertion order, message)


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One product; consumables carry the typical number of days one unit lasts."""

    product_id: str
    sku: str
    name: str
    category: str
    price: float
    consumable: bool = False
    reorder_days: int | None = None
    companions: tuple[str, ...] = ()  # product_ids often bought together with this one

    @property
    def path(self) -> str:
        return f"/products/{self.product_id}"


@dataclass(frozen=True)
class DemoCatalog:
    """The demo shop's products, with look-ups by id and by category (cheapest first)."""

    products: tuple[Product, ...]
    _by_id: dict[str, Product] = field(init=False, repr=False, compare=False)
    _by_category: dict[str, tuple[Product, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_category: dict[str, list[Product]] = {}
        for product in self.products:
            by_category.setdefault(product.category, []).append(product)
        object.__setattr__(self, "_by_id", {p.product_id: p for p in self.products})
        object.__setattr__(
            self,
            "_by_category",
            {c: tuple(sorted(ps, key=lambda p: p.price)) for c, ps in by_category.items()},
        )

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self._by_category)

    def get(self, product_id: str) -> Product:
        return self._by_id[product_id]

    def in_category(self, category: str) -> tuple[Product, ...]:
        return self._by_category[category]

    def consumables(self) -> tuple[Product, ...]:
        return tuple(p for p in self.products if p.consumable)


# (code, category, interest, ((name, price, reorder_days or 0, companion names), ...))
_Item = tuple[str, float, int, tuple[str, ...]]
_CATALOG_DATA: tuple[tuple[str, str, str, tuple[_Item, ...]], ...] = (
    (
        "COF",
        "Coffee & Tea",
        "coffee",
        (
            ("Ethiopia Yirgacheffe Beans 250g", 14.90, 21, ("Paper Coffee Filters #4 (200)",)),
            ("Colombia Supremo Beans 1kg", 39.00, 35, ("Paper Coffee Filters #4 (200)",)),
            ("House Espresso Blend 500g", 19.50, 28, ()),
            ("Decaf Swiss Water Beans 250g", 15.50, 30, ()),
            ("Espresso Pods 50-pack", 24.00, 25, ("Descaling Tablets 6-pack",)),
            ("Earl Grey Loose Leaf 100g", 9.90, 40, ()),
            ("Japanese Sencha Green Tea 100g", 12.50, 40, ()),
            ("Paper Coffee Filters #4 (200)", 6.90, 60, ()),
            ("Descaling Tablets 6-pack", 12.90, 90, ()),
            (
                "Ceramic Pour-Over Dripper",
                24.00,
                0,
                ("Paper Coffee Filters #4 (200)", "Ethiopia Yirgacheffe Beans 250g"),
            ),
            ("Glass Carafe 800ml", 29.00, 0, ()),
            ("Insulated Travel Mug", 27.50, 0, ()),
        ),
    ),
    (
        "PET",
        "Pet Supplies",
        "pets",
        (
            ("Grain-Free Dog Food 12kg", 64.90, 30, ("Dental Dog Chews 30-pack",)),
            ("Puppy Dry Food 5kg", 34.90, 25, ("Rope Tug Toy", "Retractable Leash")),
            ("Indoor Cat Food 4kg", 32.50, 28, ("Clumping Cat Litter 10kg",)),
            ("Wet Cat Food 24-pack", 28.90, 21, ("Clumping Cat Litter 10kg",)),
            ("Clumping Cat Litter 10kg", 18.90, 21, ()),
            ("Dental Dog Chews 30-pack", 17.90, 30, ()),
            ("Flea & Tick Drops 3-pack", 39.90, 90, ()),
            ("Orthopedic Dog Bed", 89.00, 0, ()),
            ("Cat Scratching Post", 45.00, 0, ()),
            ("Rope Tug Toy", 9.90, 0, ()),
            ("Retractable Leash", 22.50, 0, ()),
        ),
    ),
    (
        "VIT",
        "Health & Vitamins",
        "wellness",
        (
            ("Daily Multivitamin 30-day", 19.90, 30, ("Weekly Pill Organizer",)),
            ("Omega-3 Fish Oil 60ct", 22.90, 30, ("Vitamin D3 2000IU 60ct",)),
            ("Vitamin D3 2000IU 60ct", 12.90, 60, ()),
            ("Whey Protein Vanilla 2lb", 39.90, 30, ("Shaker Bottle",)),
            ("Plant Protein Chocolate 2lb", 42.90, 30, ("Shaker Bottle",)),
            ("Magnesium Glycinate 60ct", 18.50, 30, ()),
            ("Probiotic 30ct", 29.90, 30, ()),
            ("Electrolyte Mix 30 sticks", 24.90, 30, ()),
            ("Shaker Bottle", 9.90, 0, ()),
            ("Digital Bathroom Scale", 34.90, 0, ()),
            ("Weekly Pill Organizer", 7.90, 0, ()),
        ),
    ),
    (
        "EYE",
        "Eye Care",
        "vision care",
        (
            ("Daily Contact Lenses 30-pack", 34.00, 30, ("Lubricating Eye Drops 10ml",)),
            ("Daily Contact Lenses 90-pack", 89.00, 90, ()),
            (
                "Monthly Contact Lenses 6-pack",
                49.00,
                90,
                ("Multipurpose Lens Solution 360ml", "Lens Case 3-pack"),
            ),
            ("Toric Daily Lenses 30-pack", 42.00, 30, ()),
            ("Multipurpose Lens Solution 360ml", 12.90, 30, ()),
            ("Lubricating Eye Drops 10ml", 9.50, 30, ()),
            ("Lens Case 3-pack", 5.90, 0, ()),
            ("Blue Light Glasses", 59.00, 0, ("Microfiber Cleaning Cloths",)),
            ("Polarized Sunglasses", 89.00, 0, ("Microfiber Cleaning Cloths",)),
            ("Microfiber Cleaning Cloths", 6.50, 0, ()),
        ),
    ),
    (
        "CAM",
        "Cameras & Photo",
        "photography",
        (
            (
                "Mirrorless Camera Body",
                899.00,
                0,
                (
                    "SD Card 128GB",
                    "Spare Camera Battery",
                    "Camera Sling Bag",
                    "50mm f/1.8 Prime Lens",
                ),
            ),
            (
                "Mirrorless Camera Kit 24-70mm",
                1299.00,
                0,
                ("SD Card 256GB", "Camera Sling Bag", "Carbon Travel Tripod"),
            ),
            ("Compact Travel Camera", 549.00, 0, ("SD Card 128GB", "Camera Sling Bag")),
            ("50mm f/1.8 Prime Lens", 249.00, 0, ("Lens Cleaning Kit",)),
            ("70-200mm Zoom Lens", 1099.00, 0, ("Carbon Travel Tripod", "Lens Cleaning Kit")),
            ("SD Card 128GB", 29.90, 0, ()),
            ("SD Card 256GB", 49.90, 0, ()),
            ("Carbon Travel Tripod", 169.00, 0, ()),
            ("Camera Sling Bag", 79.00, 0, ()),
            ("Spare Camera Battery", 49.00, 0, ()),
            ("Lens Cleaning Kit", 14.90, 0, ()),
        ),
    ),
    (
        "ELE",
        "Electronics",
        "gadgets",
        (
            ("Noise-Cancelling Headphones", 299.00, 0, ("Headphone Travel Case",)),
            ("True Wireless Earbuds", 149.00, 0, ("Phone Case",)),
            ("Bluetooth Speaker", 89.00, 0, ()),
            ("Smartwatch", 249.00, 0, ("65W USB-C Charger",)),
            ("65W USB-C Charger", 39.90, 0, ("USB-C Cable 2m",)),
            ("USB-C Cable 2m", 12.90, 0, ()),
            ("Power Bank 20000mAh", 49.90, 0, ("USB-C Cable 2m",)),
            ("Phone Case", 24.90, 0, ()),
            ("Headphone Travel Case", 19.90, 0, ()),
            ("Smart Plug 2-pack", 29.90, 0, ()),
            ("Rechargeable AA Batteries 8-pack", 19.90, 0, ()),
        ),
    ),
    (
        "HOM",
        "Home & Kitchen",
        "cooking",
        (
            (
                "Espresso Machine",
                549.00,
                0,
                (
                    "House Espresso Blend 500g",
                    "Burr Coffee Grinder",
                    "Milk Frother",
                    "Descaling Tablets 6-pack",
                ),
            ),
            ("Burr Coffee Grinder", 139.00, 0, ("Colombia Supremo Beans 1kg",)),
            (
                "Electric Gooseneck Kettle",
                79.00,
                0,
                ("Ceramic Pour-Over Dripper", "Japanese Sencha Green Tea 100g"),
            ),
            ("Chef's Knife 8in", 89.00, 0, ("Walnut Cutting Board",)),
            ("Cast Iron Skillet 12in", 49.00, 0, ()),
            ("Nonstick Pan Set", 119.00, 0, ("Chef's Knife 8in",)),
            ("Walnut Cutting Board", 59.00, 0, ()),
            ("Milk Frother", 39.00, 0, ()),
            ("Water Filter Pitcher", 34.90, 0, ("Water Filter Cartridges 3-pack",)),
            ("Water Filter Cartridges 3-pack", 24.90, 60, ()),
            ("Dish Soap Refill 1L", 8.90, 45, ()),
        ),
    ),
    (
        "SPO",
        "Sports & Outdoors",
        "fitness",
        (
            ("Yoga Mat", 49.00, 0, ("Resistance Bands Set", "Foam Roller")),
            ("Running Shoes", 129.00, 0, ("Running Socks 3-pack", "Energy Gels 24-pack")),
            ("Running Socks 3-pack", 18.00, 0, ()),
            ("Adjustable Dumbbells", 299.00, 0, ()),
            ("Resistance Bands Set", 29.90, 0, ()),
            ("Insulated Water Bottle", 34.90, 0, ()),
            ("Hiking Backpack 28L", 119.00, 0, ("Headlamp", "Insulated Water Bottle")),
            ("Headlamp", 39.90, 0, ()),
            ("Foam Roller", 29.90, 0, ()),
            ("Energy Gels 24-pack", 36.00, 30, ()),
            ("Fitness Tracker Band", 99.00, 0, ()),
        ),
    ),
)

_INTEREST = {category: interest for _, category, interest, _ in _CATALOG_DATA}


def default_catalog() -> DemoCatalog:
    """The fixed demo catalogue (~90 products, 8 categories, consumables and companions)."""
    ids: dict[str, str] = {}
    for code, _, _, items in _CATALOG_DATA:
        for i, (name, *_rest) in enumerate(items, start=1):
            ids[name] = f"{code.lower()}-{i:03d}"
    products = []
    for code, category, _, items in _CATALOG_DATA:
        for i, (name, price, days, companions) in enumerate(items, start=1):
            products.append(
                Product(
                    product_id=ids[name],
                    sku=f"KP-{code}-{100 + i}",
                    name=name,
                    category=category,
                    price=price,
                    consumable=days > 0,
                    reorder_days=days or None,
                    companions=tuple(ids[c] for c in companions),
                )
            )
    return DemoCatalog(tuple(products))


# --------------------------------------------------------------------------------------------
# Reference data: channels, places, names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Channel:
    """An acquisition channel and the propensities of the people it brings."""

    name: str
    weight: float  # share of first touches (referral is only reached through referrers)
    identify: float  # chance a visitor signs up
    buy: float  # chance a signed-up customer ever orders
    rate: float  # purchase-rate multiplier
    churn: float  # dropout multiplier
    source: str | None  # utm_source; None = no campaign
    medium: str | None
    campaigns: tuple[str, ...]
    referrer: str  # page referrer on the landing page


_CHANNELS = (
    _Channel(
        "organic_search", 0.27, 0.78, 0.62, 1.00, 1.00, None, None, (), "https://www.google.com/"
    ),
    _Channel(
        "paid_search",
        0.17,
        0.74,
        0.58,
        0.95,
        1.15,
        "google",
        "cpc",
        ("brand-search", "coffee-generic", "camera-deals", "pet-food-search"),
        "https://www.google.com/",
    ),
    _Channel(
        "social",
        0.14,
        0.66,
        0.45,
        0.80,
        1.35,
        "instagram",
        "social",
        ("spring-launch", "pet-lovers", "fitness-challenge", "gift-guide"),
        "https://www.instagram.com/",
    ),
    _Channel(
        "email",
        0.07,
        0.95,
        0.72,
        1.15,
        0.80,
        "newsletter",
        "email",
        ("partner-newsletter", "lead-magnet-coffee-guide"),
        "",
    ),
    _Channel("direct", 0.20, 0.85, 0.68, 1.05, 0.90, None, None, (), ""),
    _Channel(
        "affiliate",
        0.08,
        0.70,
        0.50,
        0.85,
        1.40,
        "partner-network",
        "affiliate",
        ("blog-reviews", "coupon-sites", "cashback-portal"),
        "https://www.bestbuys-blog.com/",
    ),
)
_REFERRAL = _Channel("referral", 0.0, 1.0, 0.80, 1.15, 0.70, None, None, (), "")
_CHANNEL_CUM = tuple(sum(c.weight for c in _CHANNELS[: i + 1]) for i in range(len(_CHANNELS)))


@dataclass(frozen=True)
class _Country:
    code: str
    weight: float
    locale: str
    phone: str
    eur_share: float  # share of customers there who pay in EUR
    vat: float
    cities: tuple[tuple[str, str, int], ...]  # (city, IANA timezone, UTC offset hours)


_COUNTRIES = (
    _Country(
        "US",
        0.55,
        "en-US",
        "+1",
        0.0,
        0.07,
        (
            ("New York", "America/New_York", -5),
            ("Los Angeles", "America/Los_Angeles", -8),
            ("Chicago", "America/Chicago", -6),
            ("Houston", "America/Chicago", -6),
            ("Seattle", "America/Los_Angeles", -8),
            ("Austin", "America/Chicago", -6),
            ("Denver", "America/Denver", -7),
            ("Boston", "America/New_York", -5),
            ("Atlanta", "America/New_York", -5),
            ("Miami", "America/New_York", -5),
        ),
    ),
    _Country(
        "CA",
        0.07,
        "en-CA",
        "+1",
        0.0,
        0.13,
        (
            ("Toronto", "America/Toronto", -5),
            ("Vancouver", "America/Vancouver", -8),
            ("Montreal", "America/Toronto", -5),
        ),
    ),
    _Country(
        "GB",
        0.10,
        "en-GB",
        "+44",
        0.0,
        0.20,
        (
            ("London", "Europe/London", 0),
            ("Manchester", "Europe/London", 0),
            ("Edinburgh", "Europe/London", 0),
        ),
    ),
    _Country(
        "DE",
        0.09,
        "de-DE",
        "+49",
        0.4,
        0.19,
        (
            ("Berlin", "Europe/Berlin", 1),
            ("Munich", "Europe/Berlin", 1),
            ("Hamburg", "Europe/Berlin", 1),
        ),
    ),
    _Country(
        "FR",
        0.06,
        "fr-FR",
        "+33",
        0.4,
        0.20,
        (("Paris", "Europe/Paris", 1), ("Lyon", "Europe/Paris", 1)),
    ),
    _Country(
        "NL",
        0.04,
        "nl-NL",
        "+31",
        0.4,
        0.21,
        (("Amsterdam", "Europe/Amsterdam", 1), ("Utrecht", "Europe/Amsterdam", 1)),
    ),
    _Country(
        "ES",
        0.04,
        "es-ES",
        "+34",
        0.4,
        0.21,
        (("Madrid", "Europe/Madrid", 1), ("Barcelona", "Europe/Madrid", 1)),
    ),
    _Country(
        "AU",
        0.05,
        "en-AU",
        "+61",
        0.0,
        0.10,
        (("Sydney", "Australia/Sydney", 10), ("Melbourne", "Australia/Melbourne", 10)),
    ),
)
_COUNTRY_CUM = tuple(sum(c.weight for c in _COUNTRIES[: i + 1]) for i in range(len(_COUNTRIES)))

_FEMALE = (
    "Emma",
    "Olivia",
    "Ava",
    "Sophia",
    "Mia",
    "Amelia",
    "Harper",
    "Ella",
    "Grace",
    "Chloe",
    "Lena",
    "Clara",
    "Hannah",
    "Julia",
    "Laura",
    "Sara",
    "Nora",
    "Alice",
    "Zoe",
    "Maya",
    "Lucia",
    "Ines",
    "Anna",
    "Elena",
    "Priya",
    "Aisha",
    "Mei",
    "Yuki",
)
_MALE = (
    "Liam",
    "Noah",
    "Oliver",
    "James",
    "Lucas",
    "Henry",
    "Ethan",
    "Leo",
    "Jack",
    "Max",
    "Felix",
    "Paul",
    "David",
    "Daniel",
    "Samuel",
    "Hugo",
    "Mateo",
    "Jonas",
    "Tom",
    "Ben",
    "Omar",
    "Arjun",
    "Kenji",
    "Marco",
    "Lars",
    "Victor",
    "Adam",
    "Ryan",
)
_LAST = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Martinez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Martin",
    "Lee",
    "Walker",
    "Hall",
    "Young",
    "King",
    "Wright",
    "Scott",
    "Green",
    "Baker",
    "Adams",
    "Nelson",
    "Mueller",
    "Schmidt",
    "Fischer",
    "Dubois",
    "Moreau",
    "de Vries",
    "Jansen",
    "Fernandez",
    "Lopez",
    "Rossi",
    "Novak",
    "Kowalski",
    "Patel",
    "Nguyen",
    "Kim",
    "Chen",
)
_MAIL_DOMAINS = (
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "proton.me",
    "hotmail.com",
    "gmx.net",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
)
_EXTRA_INTERESTS = ("travel", "gaming", "gardening", "music", "reading", "cycling", "design")

# Category weights by age band (young < 30 ≤ middle < 50 ≤ older): personas have a shape.
_AGE_TASTE = {
    "young": {
        "Coffee & Tea": 1.2,
        "Pet Supplies": 0.8,
        "Health & Vitamins": 0.8,
        "Eye Care": 0.8,
        "Cameras & Photo": 1.3,
        "Electronics": 1.7,
        "Home & Kitchen": 0.6,
        "Sports & Outdoors": 1.7,
    },
    "middle": {
        "Coffee & Tea": 1.3,
        "Pet Supplies": 1.2,
        "Health & Vitamins": 1.0,
        "Eye Care": 1.0,
        "Cameras & Photo": 1.0,
        "Electronics": 1.0,
        "Home & Kitchen": 1.2,
        "Sports & Outdoors": 1.0,
    },
    "older": {
        "Coffee & Tea": 1.1,
        "Pet Supplies": 1.2,
        "Health & Vitamins": 1.7,
        "Eye Care": 1.6,
        "Cameras & Photo": 0.8,
        "Electronics": 0.6,
        "Home & Kitchen": 1.4,
        "Sports & Outdoors": 0.6,
    },
}

_NEWSLETTER_THEMES = (
    ("Fresh Roasts of the Month", "Just roasted: this month's single origins"),
    ("New In: Photo Gear", "New lenses and bags for your next trip"),
    ("Pet Care Essentials", "Everything your pet needs, delivered"),
    ("Wellness Week", "Feel good: 15% off vitamins this week"),
    ("Weekend Deals", "Weekend deals end Sunday night"),
    ("Kitchen Upgrades", "Cook like a pro with our new kitchen picks"),
    ("Get Outside", "Gear up for your next adventure"),
    ("Top Picks for You", "We picked these just for you"),
)

_NPS_COMMENTS = {
    "promoter": (
        "Fast shipping and great quality.",
        "Love the coffee subscription!",
        "Best shop for pet food, always on time.",
        "Great prices and friendly support.",
        "My go-to store, recommended it to friends.",
    ),
    "passive": (
        "Good, but prices are a bit high.",
        "Delivery took longer than expected.",
        "Fine overall, the website could be faster.",
        "Decent selection.",
    ),
    "detractor": (
        "My order arrived damaged and the refund took too long.",
        "Customer support never replied.",
        "Wrong item delivered.",
        "Too expensive compared to other shops.",
        "Item stopped working after a week.",
    ),
}
_REFUND_REASONS = ("damaged", "wrong_item", "not_as_described", "changed_mind", "late_delivery")
_COUPONS = (("SAVE15", 0.15), ("SPRING20", 0.20), ("FREESHIP", 0.0), ("FLASH10", 0.10))
_CART_EMAIL = ("cart-reminder", "Abandoned Cart", "You left something behind")
_WINBACK_EMAIL = ("winback", "Win-back", "We miss you: 20% off your next order")


# --------------------------------------------------------------------------------------------
# Message builders (key order is fixed so output is byte-identical run to run)
# --------------------------------------------------------------------------------------------


def _envelope(kind: str, uid: str | None, aid: str | None) -> Message:
    # messageId and timestamp are filled in when the person's messages are finished
    return {"type": kind, "messageId": "", "timestamp": "", "userId": uid, "anonymousId": aid}


def _track(uid: str | None, aid: str | None, event: str, props: dict, ctx: dict) -> Message:
    msg = _envelope("track", uid, aid)
    msg["event"] = event
    msg["properties"] = props
    msg["context"] = ctx
    msg["integrations"] = {}
    return msg


def _page(uid: str | None, aid: str | None, name: str, props: dict, ctx: dict) -> Message:
    msg = _envelope("page", uid, aid)
    msg["name"] = name
    msg["properties"] = props
    msg["context"] = ctx
    msg["integrations"] = {}
    return msg


def _identify(uid: str, aid: str | None, traits: dict, ctx: dict) -> Message:
    msg = _envelope("identify", uid, aid)
    msg["traits"] = traits
    msg["context"] = ctx
    msg["integrations"] = {}
    return msg


def _group(uid: str, aid: str | None, group_id: str, traits: dict, ctx: dict) -> Message:
    msg = _envelope("group", uid, aid)
    msg["groupId"] = group_id
    msg["traits"] = traits
    msg["context"] = ctx
    msg["integrations"] = {}
    return msg


def _library(name: str) -> dict:
    return {"library": {"name": name, "version": "1.0.0"}}


def _pick(rng: random.Random, items: Sequence[Any], cum: Sequence[float]) -> Any:
    """Weighted choice from precomputed cumulative weights (faster than choices())."""
    return items[bisect.bisect_right(cum, rng.random() * cum[-1])]


# --------------------------------------------------------------------------------------------
# World: clock, counters and output
# --------------------------------------------------------------------------------------------


class _World:
    """Shared randomness, time window, id counters and message finishing for one run."""

    def __init__(self, customers: int, seed: int, end: datetime, years: float) -> None:
        self.rng = random.Random(seed)
        self.customers = customers
        self.end = (end - _EPOCH) // timedelta(milliseconds=1)
        self.start = self.end - int(years * 365.25 * DAY_MS)
        self.catalog = default_catalog()
        self.persons = 0
        self.contacts = 0
        self._orders = 0
        self._messages = 0
        self._prefix = f"demo-{seed}-{end:%Y%m%d}-"
        self._dates: dict[int, str] = {}

    def growth_time(self, growth: float = 1.1) -> int:
        """A moment in the window, denser towards the end: the business is growing."""
        x = math.log1p(self.rng.random() * math.expm1(growth)) / growth
        return self.start + int(x * (self.end - self.start))

    def order_id(self) -> str:
        self._orders += 1
        return f"ord-{self._orders:07d}"

    def date(self, ms: int) -> str:
        day = ms // DAY_MS
        text = self._dates.get(day)
        if text is None:
            text = (_EPOCH + timedelta(days=day)).date().isoformat()
            self._dates[day] = text
        return text

    def iso(self, ms: int) -> str:
        """`2025-03-01T10:22:31.123000+00:00` without building a datetime per message."""
        rem = ms % DAY_MS
        seconds, milli = divmod(rem, 1000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return f"{self.date(ms)}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}000+00:00"

    def finish(self, events: list[Timed]) -> list[Message]:
        """Time-ordered messages inside [start, end), with messageId and timestamp set."""
        events.sort()
        out = []
        for ts, _, msg in events:
            if self.start <= ts < self.end:
                self._messages += 1
                msg["messageId"] = f"{self._prefix}{self._messages}"
                msg["timestamp"] = self.iso(ts)
                out.append(msg)
        return out


# --------------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Latent:
    """Hidden per-person parameters that drive behaviour (never emitted directly)."""

    satisfaction: float  # ~N(0, 1): NPS, dropout
    spend: float  # Gamma-Gamma-like spend level, mean 1
    rate: float  # purchases per day while alive (gamma across people)
    dropout: float  # chance of becoming inactive after an order (beta across people)
    refund_rate: float
    email_affinity: float
    opt_in: bool
    buyer: bool


@dataclass(slots=True)
class _Profile:
    """Who the person is: demographics and psychographics for traits and personas."""

    first: str
    last: str
    gender: str | None
    age: int
    country: _Country
    city: str
    timezone: str
    offset: int
    currency: str
    ip: str
    user_agent: str
    favorites: tuple[str, ...]
    interests: list[str]
    sensitivity: str
    phone: str
    email: str


@dataclass(slots=True)
class _Person:
    n: int
    uid: str
    aid: str
    channel: _Channel
    signup: int
    signs_up: bool
    latent: _Latent
    profile: _Profile
    entry: dict  # first-session context additions (campaign, referrer)
    landing_query: str
    referred_by: str | None = None
    known: bool = False
    events: list[Timed] = field(default_factory=list)
    alive: list[tuple[int, int]] = field(default_factory=list)
    orders: int = 0
    refunds: list[int] = field(default_factory=list)  # refund times
    surveys: int = 0
    last_survey: int = -(10**15)
    code: str | None = None
    referrals: list[tuple[str, int]] = field(default_factory=list)
    replenishing: list[str] = field(default_factory=list)
    first_order: tuple[int, str] | None = None
    abandoned: list[int] = field(default_factory=list)
    winbacks: list[tuple[int, bool]] = field(default_factory=list)  # (send time, came back)

    def add(self, ts: int, msg: Message) -> None:
        self.events.append((ts, len(self.events), msg))

    def client(self, extra: dict | None = None) -> dict:
        """Context a browser SDK (analytics.js) would send."""
        pr = self.profile
        ctx = {
            "ip": pr.ip,
            "userAgent": pr.user_agent,
            "locale": pr.country.locale,
            "timezone": pr.timezone,
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
        }
        if extra:
            ctx.update(extra)
        return ctx

    @property
    def user_id(self) -> str | None:
        return self.uid if self.known else None


def _latent(rng: random.Random, channel: _Channel) -> _Latent:
    satisfaction = rng.gauss(0.0, 1.0)
    dropout = rng.betavariate(1.3, 3.4) * channel.churn * math.exp(-0.5 * satisfaction)
    return _Latent(
        satisfaction=satisfaction,
        spend=rng.gammavariate(4.0, 0.25),
        rate=rng.gammavariate(1.2, 2.6) * channel.rate / 365.0,
        dropout=min(0.9, max(0.03, dropout)),
        refund_rate=0.12 if rng.random() < 0.12 else 0.022,
        email_affinity=rng.uniform(0.15, 1.0),
        opt_in=rng.random() < (0.97 if channel.name == "email" else 0.68),
        buyer=rng.random() < channel.buy,
    )


def _favorites(rng: random.Random, age: int) -> tuple[str, ...]:
    band = "young" if age < 30 else "middle" if age < 50 else "older"
    weights = dict(_AGE_TASTE[band])
    count = 1 if rng.random() < 0.45 else 2 if rng.random() < 0.75 else 3
    chosen: list[str] = []
    for _ in range(count):
        names = list(weights)
        cat = rng.choices(names, weights=[weights[n] for n in names])[0]
        chosen.append(cat)
        del weights[cat]
    return tuple(chosen)


def _sensitivity(rng: random.Random, spend: float) -> str:
    felt = spend * math.exp(rng.gauss(0.0, 0.3))
    return "low" if felt > 1.3 else "high" if felt < 0.7 else "medium"


def _profile(rng: random.Random, latent: _Latent, n: int) -> _Profile:
    country = _pick(rng, _COUNTRIES, _COUNTRY_CUM)
    city, tz, offset = rng.choice(country.cities)
    gender = _pick(rng, ("female", "male", "non-binary", None), (50, 96, 98, 100))
    names = {"female": _FEMALE, "male": _MALE}.get(gender, _FEMALE + _MALE)
    first = rng.choice(names)
    last = rng.choice(_LAST)
    age = int(rng.triangular(18, 78, 33))
    favorites = _favorites(rng, age)
    interests = [_INTEREST[c] for c in favorites]
    if rng.random() < 0.4:
        interests.append(rng.choice(_EXTRA_INTERESTS))
    eur = country.eur_share and rng.random() < country.eur_share
    local = last.replace(" ", "").lower()
    return _Profile(
        first=first,
        last=last,
        gender=gender,
        age=age,
        country=country,
        city=city,
        timezone=tz,
        offset=offset,
        currency="EUR" if eur else "USD",
        ip=_ip(rng),
        user_agent=rng.choice(_USER_AGENTS),
        favorites=favorites,
        interests=interests,
        sensitivity=_sensitivity(rng, latent.spend),
        phone=_phone(rng, country),
        email=f"{first.lower()}.{local}{n}@{rng.choice(_MAIL_DOMAINS)}",
    )


def _ip(rng: random.Random) -> str:
    return (
        f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    )


def _phone(rng: random.Random, country: _Country) -> str:
    return (
        f"{country.phone} {rng.randint(200, 989)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    )


def _anonymous_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# --------------------------------------------------------------------------------------------
# B2C shop
# --------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return text.lower().replace(" & ", "-").replace(" ", "-")


class _Shop:
    """The B2C web shop: visitors, customers, orders, emails, NPS and referrals."""

    def __init__(self, world: _World) -> None:
        self.w = world
        self.rng = world.rng
        self.catalog = world.catalog
        self.categories = world.catalog.categories
        self.campaigns = self._newsletter_calendar()
        self.campaign_times = [c[0] for c in self.campaigns]
        self.views = {
            (p.product_id, cur): {
                "product_id": p.product_id,
                "sku": p.sku,
                "category": p.category,
                "name": p.name,
                "price": p.price if cur == "USD" else round(p.price * _EUR_RATE, 2),
                "currency": cur,
                "url": f"{SITE}{p.path}",
            }
            for p in self.catalog.products
            for cur in ("USD", "EUR")
        }

    # -- people and their referral trees ---------------------------------------------------

    def visitor(self) -> list[list[Message]]:
        """One new visitor from a paid/organic channel, plus everyone they referred."""
        channel = _pick(self.rng, _CHANNELS, _CHANNEL_CUM)
        return self._simulate(self._new_person(channel, self.w.growth_time()), 0)

    def _new_person(
        self, channel: _Channel, first_touch: int, referred_by: str | None = None
    ) -> _Person:
        w, rng = self.w, self.rng
        w.persons += 1
        latent = _latent(rng, channel)
        profile = _profile(rng, latent, w.persons)
        entry, query = self._entry(channel, referred_by)
        return _Person(
            n=w.persons,
            uid=f"u-{w.persons:06d}",
            aid=_anonymous_id(rng),
            channel=channel,
            signup=first_touch,
            signs_up=referred_by is not None or rng.random() < channel.identify,
            latent=latent,
            profile=profile,
            entry=entry,
            landing_query=query,
            referred_by=referred_by,
        )

    def _entry(self, channel: _Channel, code: str | None) -> tuple[dict, str]:
        """First-touch context (UTM campaign or referral) as analytics.js records it."""
        if code is not None:
            return {"referrer": {"type": "referral", "id": code}}, f"?ref={code}"
        if channel.source is None:
            return {}, ""
        source = channel.source
        if channel.name == "social":
            source = self.rng.choice(("instagram", "facebook", "tiktok"))
        name = self.rng.choice(channel.campaigns)
        query = f"?utm_source={source}&utm_medium={channel.medium}&utm_campaign={name}"
        return {"campaign": {"source": source, "medium": channel.medium, "name": name}}, query

    def _simulate(self, p: _Person, depth: int) -> list[list[Message]]:
        """The person's life, then their referred friends' (whose first orders pay out)."""
        self._live(p)
        lists: list[list[Message]] = []
        for code, sent in p.referrals:
            child = self._referred(code, sent) if depth < _MAX_REFERRAL_DEPTH else None
            if child is None:
                continue
            lists.extend(self._simulate(child, depth + 1))
            if child.first_order is not None:
                self._referral_converted(p, code, child)
        own = self.w.finish(p.events)
        return [own, *lists] if own else lists

    def _live(self, p: _Person) -> None:
        if not p.signs_up:
            self._window_shopper(p)
            return
        t, extra = self._arrive(p)
        t = self._sign_up(p, t, extra)
        self._lifecycle(p, t)
        self._emails(p)

    def _daytime(self, p: _Person, t: int) -> int:
        """People shop while awake: sessions starting at night move to the morning."""
        hour = (t // HOUR_MS + p.profile.offset) % 24
        return t + 8 * HOUR_MS if hour < 7 else t

    def _gap(self, low: int = 8, high: int = 90) -> int:
        return self.rng.randint(low, high) * SECOND_MS

    # -- anonymous phase and sign-up --------------------------------------------------------

    def _window_shopper(self, p: _Person) -> None:
        """A visitor who never signs up: awareness only, all under the anonymousId."""
        t = self._browse(p, self._daytime(p, p.signup), p.entry, first=True)
        for _ in range(self.rng.choice((0, 0, 1, 2))):
            t = self._daytime(p, t + int((0.2 + self.rng.expovariate(0.2)) * DAY_MS))
            t = self._browse(p, t)

    def _arrive(self, p: _Person) -> tuple[int, dict | None]:
        """Anonymous browsing before sign-up; returns the sign-up session start and context."""
        rng = self.rng
        p.signup = self._daytime(p, p.signup)
        # referred friends land through the link they were sent, never before it
        same_day = p.referred_by is not None or rng.random() < 0.45
        lead = 0 if same_day else int((1 + rng.expovariate(0.25)) * DAY_MS)
        first = p.signup - lead
        if lead == 0 or first <= self.w.start:
            return self._landing(p, p.signup, p.entry, first=True), p.entry
        first = self._daytime(p, first)
        self._browse(p, first, p.entry, first=True)
        if rng.random() < 0.35:
            self._browse(p, self._daytime(p, first + (p.signup - first) // 2))
        return self._landing(p, p.signup, None), None

    def _sign_up(self, p: _Person, t: int, extra: dict | None) -> int:
        """Sign-up page, then identify with BOTH ids (merges the anonymous history)."""
        t += self._gap(20, 240)
        props = {
            "path": "/signup",
            "url": f"{SITE}/signup",
            "title": "Create your account",
            "referrer": f"{SITE}/",
        }
        p.add(t, _page(None, p.aid, "Sign Up", props, p.client(extra)))
        p.known = True
        t += self._gap(30, 180)
        p.add(t, _identify(p.uid, p.aid, self._traits(p, t), p.client(extra)))
        t += 400
        signed = {
            "method": self.rng.choice(("email", "email", "google", "apple")),
            "acquisition_channel": p.channel.name,
        }
        if p.referred_by:
            signed["referral_code"] = p.referred_by
        p.add(t, _track(p.uid, p.aid, "Signed Up", signed, p.client(extra)))
        p.signup = t
        return t

    def _traits(self, p: _Person, t: int) -> dict:
        pr = p.profile
        traits: dict[str, Any] = {
            "email": pr.email,
            "first_name": pr.first,
            "last_name": pr.last,
            "name": f"{pr.first} {pr.last}",
            "phone": pr.phone,
            "country": pr.country.code,
            "city": pr.city,
            "age": pr.age,
            "gender": pr.gender,
            "created_at": self.w.iso(t),
            "email_opt_in": p.latent.opt_in,
            "acquisition_channel": p.channel.name,
            "interests": list(pr.interests),
            "price_sensitivity": pr.sensitivity,
        }
        if pr.gender is None:
            del traits["gender"]
        if p.referred_by:
            traits["referred_by"] = p.referred_by
        return traits

    # -- browsing ---------------------------------------------------------------------------

    def _landing(self, p: _Person, t: int, extra: dict | None, first: bool = False) -> int:
        rng = self.rng
        if rng.random() < 0.5:
            name, path, title = "Home", "/", "Keepers Demo Shop"
        else:
            category = self._category(p)
            name, path, title = "Category", f"/c/{_slug(category)}", category
        query, referrer = (p.landing_query, p.channel.referrer) if first else ("", "")
        if first and p.channel.name == "social":
            referrer = f"https://www.{p.entry['campaign']['source']}.com/"
        props = {"path": path, "url": f"{SITE}{path}{query}", "title": title, "referrer": referrer}
        p.add(t, _page(p.user_id, p.aid, name, props, p.client(extra)))
        return t

    def _browse(
        self,
        p: _Person,
        t: int,
        extra: dict | None = None,
        first: bool = False,
        cart_rate: float = 0.3,
    ) -> int:
        """A session of product views; sometimes a cart (and checkout) that is abandoned."""
        rng = self.rng
        t = self._landing(p, t, extra, first)
        items = self.catalog.in_category(self._category(p))
        product = items[0]
        for _ in range(min(6, 1 + int(rng.expovariate(0.7)))):
            t += self._gap()
            product = self._choose(p, items)
            self._client(p, t, "Product Viewed", self._view(p, product), extra)
        if rng.random() < cart_rate:
            t = self._abandon(p, t, product, extra)
        return t

    def _abandon(self, p: _Person, t: int, product: Product, extra: dict | None) -> int:
        t += self._gap()
        added = self._view(p, product)
        added["cart_id"] = f"cart-{p.n}-{len(p.events)}"
        added["quantity"] = 1
        self._client(p, t, "Product Added", added, extra)
        if self.rng.random() < 0.35:
            t += self._gap(30, 300)
            line = self._line(product, 1, p.profile.currency)
            props = {
                "cart_id": added["cart_id"],
                "value": line["price"],
                "revenue": line["price"],
                "currency": p.profile.currency,
                "products": [line],
            }
            self._client(p, t, "Checkout Started", props, extra)
            if p.known:
                p.abandoned.append(t)
        return t

    def _browsing(self, p: _Person, a: int, b: int, per_day: float) -> None:
        """Browsing sessions as a Poisson process while the person is engaged."""
        t, b = a, min(b, self.w.end)
        while True:
            t += int(self.rng.expovariate(per_day) * DAY_MS) + HOUR_MS
            if t >= b:
                return
            self._browse(p, self._daytime(p, t))

    def _category(self, p: _Person) -> str:
        if self.rng.random() < 0.8:
            return self.rng.choice(p.profile.favorites)
        return self.rng.choice(self.categories)

    def _choose(self, p: _Person, items: tuple[Product, ...]) -> Product:
        """Big spenders lean to the expensive end of a category (items sorted by price)."""
        tier = min(0.95, p.latent.spend / 2.2)
        index = int(self.rng.triangular(0, len(items), tier * len(items)))
        return items[min(index, len(items) - 1)]

    def _view(self, p: _Person, product: Product) -> dict:
        return dict(self.views[product.product_id, p.profile.currency])

    def _line(self, product: Product, quantity: int, currency: str) -> dict:
        price = product.price if currency == "USD" else round(product.price * _EUR_RATE, 2)
        return {
            "product_id": product.product_id,
            "sku": product.sku,
            "name": product.name,
            "category": product.category,
            "price": price,
            "quantity": quantity,
        }

    def _client(self, p: _Person, t: int, event: str, props: dict, extra: dict | None) -> None:
        p.add(t, _track(p.user_id, p.aid, event, props, p.client(extra)))

    def _server(self, p: _Person, t: int, event: str, props: dict, source: str = "shop") -> None:
        p.add(t, _track(p.uid, None, event, props, _library(f"keepers-demo-{source}")))

    # -- purchasing (BTYD-like) -------------------------------------------------------------

    def _lifecycle(self, p: _Person, t: int) -> None:
        """Buy until dropping out; some lapsed customers come back for a second life."""
        if not p.latent.buyer:
            until = t + int(self.rng.expovariate(1 / 30) * DAY_MS)
            p.alive.append((t, until))
            self._browsing(p, t, until, 0.08)
            return
        death = self._buying_phase(p, t, self.rng.random() < 0.4, p.latent.dropout)
        for _ in range(2):
            back = self._comeback(p, death)
            if back is None:
                return
            t = self._browse(p, back, cart_rate=0.0)
            death = self._buying_phase(p, t, self.rng.random() < 0.55, p.latent.dropout * 0.85)

    def _buying_phase(self, p: _Person, t0: int, immediate: bool, dropout: float) -> int:
        """Orders at the person's rate; after each one they may drop out (BG/NBD-like)."""
        rng, end = self.rng, self.w.end
        t = t0 + self._gap(30, 300) if immediate else self._after(p, t0, 7.0)
        landing, last, dropped = not immediate, t0, False
        while t < end:
            refunded = self._purchase(p, t, landing)
            landing, last = True, t
            if rng.random() < min(0.95, dropout + (0.3 if refunded else 0.0)):
                dropped = True
                break
            t = self._daytime(p, t + int((1 + rng.expovariate(p.latent.rate)) * DAY_MS))
        death = last + int(rng.expovariate(1 / 20) * DAY_MS) if dropped else end
        p.alive.append((t0, death))
        self._browsing(p, t0, death, 1.6 * p.latent.rate + 0.01)
        return death

    def _after(self, p: _Person, t: int, mean_days: float) -> int:
        return self._daytime(p, t + int(self.rng.expovariate(1 / mean_days) * DAY_MS))

    def _comeback(self, p: _Person, death: int) -> int | None:
        """Reactivation: a lapsed customer returns after a long gap (win-back email first)."""
        rng, end = self.rng, self.w.end
        if death > end - 90 * DAY_MS:
            return None
        chance = min(0.4, max(0.05, 0.18 + 0.06 * p.latent.satisfaction))
        back = self._daytime(p, death + int(rng.uniform(90, 420) * DAY_MS))
        if rng.random() >= chance or back >= end:
            p.winbacks.append((death + 60 * DAY_MS, False))
            return None
        p.winbacks.append((back - rng.randint(2, 30) * HOUR_MS, True))
        return back

    def _purchase(self, p: _Person, t: int, landing: bool) -> bool:
        """A purchase session: views, adds, checkout, order. Returns whether it is refunded."""
        if landing:
            t = self._landing(p, t, None)
        lines = self._basket(p)
        cart_id = f"cart-{p.n}-{len(p.events)}"
        for product, qty in lines:
            t += self._gap()
            self._client(p, t, "Product Viewed", self._view(p, product), None)
            t += self._gap(5, 40)
            added = self._view(p, product)
            added["cart_id"] = cart_id
            added["quantity"] = qty
            self._client(p, t, "Product Added", added, None)
        order, refunded, t = self._checkout(p, t, lines, cart_id, reorder=False)
        self._after_order(p, t, order, lines, refunded)
        return refunded

    def _basket(self, p: _Person) -> list[tuple[Product, int]]:
        """Lines from favourite categories, with companions (co-purchase affinity)."""
        rng, catalog = self.rng, self.catalog
        chosen: dict[str, tuple[Product, int]] = {}
        wanted = 1 + min(3, self._poisson(0.2 + 0.45 * p.latent.spend))
        for _ in range(12):
            if len(chosen) >= wanted:
                break
            product = self._choose(p, catalog.in_category(self._category(p)))
            if product.product_id in chosen or product.product_id in p.replenishing:
                continue
            chosen[product.product_id] = (product, self._quantity(product))
            for i, companion in enumerate(product.companions):
                skip = companion in chosen or companion in p.replenishing
                if not skip and rng.random() < (0.45 if i == 0 else 0.2):
                    chosen[companion] = (catalog.get(companion), 1)
        if not chosen:
            product = catalog.in_category(self.categories[0])[-1]
            chosen[product.product_id] = (product, 1)
        return list(chosen.values())

    def _poisson(self, mean: float) -> int:
        limit, k, prod = math.exp(-mean), 0, self.rng.random()
        while prod > limit:
            k += 1
            prod *= self.rng.random()
        return k

    def _quantity(self, product: Product) -> int:
        roll = self.rng.random()
        if product.consumable:
            return 1 if roll < 0.7 else 2 if roll < 0.92 else 3
        return 1 if roll < 0.93 else 2

    def _checkout(
        self, p: _Person, t: int, lines: list[tuple[Product, int]], cart_id: str, reorder: bool
    ) -> tuple[dict, bool, int]:
        """Checkout Started (browser) and Order Completed (server); maybe refunded later."""
        order = self._order(p, lines, reorder)
        t += self._gap(20, 120)
        started = {k: v for k, v in order.items() if k != "products"}
        started["cart_id"] = cart_id
        started["value"] = order["revenue"]
        started["products"] = [dict(line) for line in order["products"]]
        self._client(p, t, "Checkout Started", started, None)
        t += self._gap(30, 240)
        self._server(p, t, "Order Completed", order)
        p.orders += 1
        if p.first_order is None:
            p.first_order = (t, order["order_id"])
        refunded = self.rng.random() < p.latent.refund_rate
        if refunded:
            self._refund(p, t, order)
        return order, refunded, t

    def _order(self, p: _Person, lines: list[tuple[Product, int]], reorder: bool) -> dict:
        """E-commerce spec v2 order: revenue = Σ price × quantity − discount."""
        currency = p.profile.currency
        products = [self._line(product, qty, currency) for product, qty in lines]
        subtotal = round(sum(x["price"] * x["quantity"] for x in products), 2)
        coupon, rate = self._coupon(p, reorder)
        discount = round(subtotal * rate, 2)
        revenue = round(subtotal - discount, 2)
        shipping = 0.0 if subtotal >= 49 or coupon == "FREESHIP" else 5.99
        tax = round(revenue * p.profile.country.vat, 2)
        order: dict[str, Any] = {
            "order_id": self.w.order_id(),
            "affiliation": "Keepers Demo Shop",
            "total": round(revenue + shipping + tax, 2),
            "revenue": revenue,
            "shipping": shipping,
            "tax": tax,
            "discount": discount,
        }
        if coupon:
            order["coupon"] = coupon
        order["currency"] = currency
        order["products"] = products
        return order

    def _coupon(self, p: _Person, reorder: bool) -> tuple[str | None, float]:
        """Price-sensitive people use coupons more; first orders get a welcome code."""
        rng = self.rng
        if reorder:
            return ("SUBSCRIBE5", 0.05) if rng.random() < 0.3 else (None, 0.0)
        if p.orders == 0 and rng.random() < 0.3:
            return "WELCOME10", 0.10
        chance = {"high": 0.3, "medium": 0.12, "low": 0.05}[p.profile.sensitivity]
        if rng.random() >= chance:
            return None, 0.0
        if p.orders >= 3 and rng.random() < 0.4:
            return "LOYAL15", 0.15
        return rng.choice(_COUPONS)

    def _refund(self, p: _Person, t: int, order: dict) -> None:
        t += self.rng.randint(2, 12) * DAY_MS + self.rng.randint(0, 8 * 3600) * SECOND_MS
        props = {
            "order_id": order["order_id"],
            "total": order["total"],
            "revenue": order["revenue"],
            "currency": order["currency"],
            "reason": self.rng.choice(_REFUND_REASONS),
        }
        self._server(p, t, "Order Refunded", props)
        p.refunds.append(t)

    def _after_order(
        self, p: _Person, t: int, order: dict, lines: list[tuple[Product, int]], refunded: bool
    ) -> None:
        for product, qty in lines:
            if product.consumable:
                self._maybe_replenish(p, product, qty, t)
        self._maybe_survey(p, t, order["order_id"], refunded)
        loyal = p.orders == 4 and p.latent.satisfaction > 0
        if loyal and p.code is None and self.rng.random() < 0.25:
            self._start_referrals(p, t + DAY_MS)

    # -- replenishment ----------------------------------------------------------------------

    def _maybe_replenish(self, p: _Person, product: Product, qty: int, t: int) -> None:
        """Consumables: re-order at a regular personal interval until the customer stops."""
        rng = self.rng
        if product.product_id in p.replenishing or len(p.replenishing) >= 2:
            return
        if rng.random() >= (0.6 if product.category in p.profile.favorites else 0.3):
            return
        p.replenishing.append(product.product_id)
        interval = (product.reorder_days or 30) * qty * rng.uniform(0.8, 1.25) * DAY_MS
        stop = 0.04 + 0.25 * p.latent.dropout
        first = last = t
        while True:
            t += int(interval * min(1.2, max(0.8, rng.gauss(1.0, 0.06))))
            if t >= self.w.end or rng.random() < stop:
                break
            self._reorder(p, self._daytime(p, t), product, qty)
            last = t
        p.alive.append((first, last))

    def _reorder(self, p: _Person, t: int, product: Product, qty: int) -> None:
        props = {
            "path": "/account/orders",
            "url": f"{SITE}/account/orders",
            "title": "Your orders",
            "referrer": "",
        }
        p.add(t, _page(p.uid, p.aid, "Order History", props, p.client()))
        t += self._gap(10, 60)
        added = self._view(p, product)
        cart_id = f"cart-{p.n}-{len(p.events)}"
        added["cart_id"] = cart_id
        added["quantity"] = qty
        self._client(p, t, "Product Added", added, None)
        self._checkout(p, t, [(product, qty)], cart_id, reorder=True)

    # -- NPS and referrals ------------------------------------------------------------------

    def _maybe_survey(self, p: _Person, t: int, order_id: str, refunded: bool) -> None:
        """Some orders trigger an NPS survey; the score follows satisfaction and refunds."""
        rng = self.rng
        if p.surveys >= 2 or t - p.last_survey < 120 * DAY_MS or rng.random() >= 0.3:
            return
        p.surveys += 1
        p.last_survey = t
        if rng.random() >= 0.6:
            return
        t += rng.randint(5, 14) * DAY_MS + rng.randint(0, 12) * HOUR_MS
        raw = 7.2 + 1.3 * p.latent.satisfaction + 0.4 * min(p.orders - 1, 4) + rng.gauss(0, 1.1)
        earlier = any(r <= t for r in p.refunds)
        penalty = 3.5 if refunded else 2.5 if earlier else 0.0
        score = max(0, min(10, round(raw - penalty)))
        props: dict[str, Any] = {
            "survey_id": f"nps-{self.w.date(t)[:7]}",
            "score": score,
            "order_id": order_id,
        }
        if rng.random() < 0.35:
            bucket = "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
            props["comment"] = rng.choice(_NPS_COMMENTS[bucket])
        self._server(p, t, "NPS Survey Answered", props, "surveys")
        if score >= 9 and p.code is None and rng.random() < 0.6:
            self._start_referrals(p, t)

    def _start_referrals(self, p: _Person, t: int) -> None:
        """A happy customer gets a referral code (identify trait) and shares it."""
        rng = self.rng
        p.code = f"{p.profile.first.upper()}{p.n}"
        t += rng.randint(1, 48) * HOUR_MS
        p.add(t, _identify(p.uid, None, {"referral_code": p.code}, _library("keepers-demo-shop")))
        for i in range(1 + (rng.random() < 0.6) + (rng.random() < 0.3)):
            t += int(rng.expovariate(0.1) * DAY_MS) + HOUR_MS
            props = {
                "referral_code": p.code,
                "referral_id": f"{p.code}-{i + 1}",
                "channel": rng.choice(("email", "link", "whatsapp", "sms")),
            }
            self._client(p, t, "Referral Sent", props, None)
            if rng.random() < 0.45:
                p.referrals.append((p.code, t))

    def _referred(self, code: str, sent: int) -> _Person | None:
        w = self.w
        if w.persons >= w.customers:
            return None
        signup = sent + int((0.02 + self.rng.expovariate(0.25)) * DAY_MS)
        if signup >= w.end:
            return None
        return self._new_person(_REFERRAL, signup, referred_by=code)

    def _referral_converted(self, p: _Person, code: str, child: _Person) -> None:
        assert child.first_order is not None
        t, order_id = child.first_order
        props = {
            "referral_code": code,
            "referred_user_id": child.uid,
            "order_id": order_id,
            "reward_amount": 10.0,
            "currency": "USD",
        }
        self._server(p, t + self.rng.randint(1, 90) * MINUTE_MS, "Referral Converted", props)

    # -- email ------------------------------------------------------------------------------

    def _newsletter_calendar(self) -> list[tuple[int, str, str, str]]:
        """(send time, campaign_id, campaign_name, subject) every 12–18 days."""
        rng, w = self.rng, self.w
        out: list[tuple[int, str, str, str]] = []
        t, k = w.start + rng.randint(1, 7) * DAY_MS, 0
        while t < w.end:
            k += 1
            theme, subject = _NEWSLETTER_THEMES[k % len(_NEWSLETTER_THEMES)]
            send = t // DAY_MS * DAY_MS + 15 * HOUR_MS
            out.append((send, f"cmp-{k:03d}", f"{theme} #{k}", subject))
            t += rng.randint(12, 18) * DAY_MS
        return out

    def _emails(self, p: _Person) -> None:
        """Welcome, newsletters, cart reminders and win-backs, until an unsubscribe."""
        unsubscribed = False
        for t, kind, info in self._email_plan(p):
            if t >= self.w.end:
                break
            if unsubscribed and kind != "welcome":
                continue
            unsubscribed = self._email(p, t, kind, info)

    def _email_plan(self, p: _Person) -> list[tuple[int, str, tuple]]:
        """Every email the person would get, in send order (opt-out gets the welcome only)."""
        welcome = (f"welcome-{p.n}", "welcome", "Welcome Series", "Welcome to Keepers Demo Shop!")
        plan = [(p.signup + 2 * MINUTE_MS, "welcome", welcome)]
        if p.latent.opt_in:
            plan += self._newsletters(p)
            plan += [
                (t + 3 * HOUR_MS, "cart", (f"cart-{p.n}-{i}", *_CART_EMAIL))
                for i, t in enumerate(p.abandoned)
            ]
            plan += [
                (t, "winback-hit" if back else "winback", (f"winback-{p.n}-{i}", *_WINBACK_EMAIL))
                for i, (t, back) in enumerate(p.winbacks)
            ]
        plan.sort(key=lambda item: item[0])
        return plan

    def _newsletters(self, p: _Person) -> list[tuple[int, str, tuple]]:
        """Campaigns after sign-up; each reaches ~80 % of the list (segmentation)."""
        rng, out = self.rng, []
        first = bisect.bisect_right(self.campaign_times, p.signup)
        for send, cid, name, subject in self.campaigns[first:]:
            if rng.random() < 0.8:
                t = send + rng.randint(0, 3600) * SECOND_MS
                out.append((t, "newsletter", (f"{cid}-{p.n}", cid, name, subject)))
        return out

    def _email(self, p: _Person, t: int, kind: str, info: tuple) -> bool:
        """One email's events; opens/clicks drop when disengaged. Returns True on unsubscribe."""
        rng = self.rng
        email_id, cid, name, subject = info
        props = {
            "email_id": email_id,
            "email_subject": subject,
            "campaign_id": cid,
            "campaign_name": name,
        }
        self._server(p, t, "Email Delivered", props, "email")
        active = self._active(p, t)
        p_open, p_click = self._email_odds(p, kind, active)
        if rng.random() < p_open:
            t += (
                rng.randint(1, 60) * MINUTE_MS
                if kind == "winback-hit"
                else int(rng.expovariate(1 / 3) * HOUR_MS) + MINUTE_MS
            )
            self._server(p, t, "Email Opened", dict(props), "email")
            if rng.random() < p_click:
                self._clicked(p, t + self._gap(5, 120), props, kind, active)
        if kind != "welcome" and rng.random() < (0.003 if active else 0.015):
            self._unsubscribe(p, t + self._gap(10, 600), props)
            return True
        return False

    def _email_odds(self, p: _Person, kind: str, active: bool) -> tuple[float, float]:
        if kind == "winback-hit":
            return 1.0, 1.0
        base = {"welcome": 0.65, "newsletter": 0.38, "cart": 0.45, "winback": 0.3}[kind]
        affinity = p.latent.email_affinity
        return base * affinity * (1.0 if active else 0.3), 0.25 if active else 0.08

    def _clicked(self, p: _Person, t: int, props: dict, kind: str, active: bool) -> None:
        clicked = dict(props)
        clicked["link_id"] = f"{props['campaign_id']}-cta"
        utm = f"utm_source=keepers&utm_medium=email&utm_campaign={props['campaign_id']}"
        clicked["link_url"] = f"{SITE}/?{utm}"
        self._server(p, t, "Email Link Clicked", clicked, "email")
        if active and kind in ("newsletter", "cart"):
            campaign = {"source": "keepers", "medium": "email", "name": props["campaign_name"]}
            self._browse(p, t + self._gap(5, 30), {"campaign": campaign})

    def _unsubscribe(self, p: _Person, t: int, props: dict) -> None:
        unsubscribed = dict(props)
        unsubscribed["list_id"] = "newsletter"
        self._server(p, t, "Unsubscribed", unsubscribed, "email")
        p.add(
            t + SECOND_MS,
            _identify(p.uid, None, {"email_opt_in": False}, _library("keepers-demo-email")),
        )

    def _active(self, p: _Person, t: int) -> bool:
        return any(a <= t <= b + 30 * DAY_MS for a, b in p.alive)


# --------------------------------------------------------------------------------------------
# B2B accounts
# --------------------------------------------------------------------------------------------

B2B_SITE = "https://www.keepers-demo.io"
_CO_A = (
    "North",
    "Blue",
    "Bright",
    "Iron",
    "Silver",
    "Green",
    "Summit",
    "Harbor",
    "Pixel",
    "Atlas",
    "Cedar",
    "Nova",
    "Vertex",
    "Lumen",
    "Granite",
    "Maple",
    "Copper",
    "River",
)
_CO_B = ("wind", "stone", "field", "peak", "line", "bridge", "leaf", "wave", "works", "gate")
_CO_C = (
    "Labs",
    "Logistics",
    "Analytics",
    "Studios",
    "Health",
    "Foods",
    "Systems",
    "Retail",
    "Partners",
    "Robotics",
    "Media",
    "Outfitters",
)
_INDUSTRIES = (
    "Software",
    "Retail",
    "Healthcare",
    "Logistics",
    "Financial Services",
    "Education",
    "Manufacturing",
    "Media",
    "Hospitality",
    "Real Estate",
)
_SIZES = (8, 15, 25, 40, 60, 120, 250, 600, 1500, 5000)
_SIZE_CUM = (18, 34, 48, 60, 70, 80, 88, 94, 98, 100)
_PLAN_PRICE = {"starter": 1_200, "team": 6_000, "business": 18_000, "enterprise": 60_000}
_TITLES = (
    "CEO",
    "Head of Marketing",
    "Marketing Manager",
    "CRM Manager",
    "Data Analyst",
    "Growth Lead",
    "CTO",
    "Customer Success Manager",
    "Product Manager",
)
_OWNERS = ("Dana Whitfield", "Marcus Lee", "Priya Raman", "Tom Kowalski", "Elena Rossi")
_APP_PAGES = (
    ("Dashboard", "/dashboard"),
    ("Journeys", "/journeys"),
    ("Segments", "/segments"),
    ("Reports", "/reports"),
)
_LOST_REASONS = ("price", "no_budget", "chose_competitor", "no_decision", "missing_feature")


@dataclass(slots=True)
class _Contact:
    uid: str
    aid: str
    first: str
    last: str
    email: str
    title: str
    gender: str | None
    age: int
    country: _Country
    city: str
    timezone: str
    ip: str
    user_agent: str
    phone: str
    joined: int = 0

    def client(self, group_id: str) -> dict:
        return {
            "ip": self.ip,
            "userAgent": self.user_agent,
            "locale": self.country.locale,
            "timezone": self.timezone,
            "groupId": group_id,
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
        }


@dataclass(slots=True)
class _Account:
    n: int
    group_id: str
    name: str
    industry: str
    employees: int
    website: str
    domain: str
    plan: str  # the paid plan this account's size fits
    owner: str
    created: int
    events: list[Timed] = field(default_factory=list)
    deals: int = 0

    def add(self, ts: int, msg: Message) -> None:
        self.events.append((ts, len(self.events), msg))

    def server(self, source: str) -> dict:
        ctx = _library(f"keepers-demo-{source}")
        ctx["groupId"] = self.group_id
        return ctx


class _Accounts:
    """The B2B side: companies trial the product, invite colleagues and go through deals."""

    def __init__(self, world: _World) -> None:
        self.w = world
        self.rng = world.rng
        self._domains: dict[str, int] = {}

    def account(self, k: int) -> list[Message]:
        """One account's whole history: research, trial, invites, usage, deals, renewals."""
        a = self._new_account(k)
        contacts = self._contacts(a)
        main = contacts[0]
        self._research(a, main)
        self._open(a, main, a.created)
        for contact in contacts[1:]:
            self._invite(a, main, contact, a.created + self._days(1, 10))
        trial_end = a.created + 14 * DAY_MS
        self._usage(a, contacts, a.created, trial_end, 2.0)
        self._trial_event(a, main, trial_end, "Trial Ended")
        self._sales(a, contacts, trial_end)
        return self.w.finish(a.events)

    def _new_account(self, k: int) -> _Account:
        rng = self.rng
        name = f"{rng.choice(_CO_A)}{rng.choice(_CO_B)} {rng.choice(_CO_C)}"
        slug = name.lower().replace(" ", "")
        seen = self._domains.get(slug, 0)
        self._domains[slug] = seen + 1
        domain = f"{slug}{seen + 1 if seen else ''}.com"
        employees = int(_pick(rng, _SIZES, _SIZE_CUM) * rng.uniform(0.8, 1.25))
        plan = (
            "starter"
            if employees < 30
            else "team"
            if employees < 150
            else "business"
            if employees < 1000
            else "enterprise"
        )
        return _Account(
            n=k + 1,
            group_id=f"acct-{k + 1:04d}",
            name=name,
            industry=rng.choice(_INDUSTRIES),
            employees=employees,
            website=f"https://www.{domain}",
            domain=domain,
            plan=plan,
            owner=rng.choice(_OWNERS),
            created=self.w.growth_time(0.8),
        )

    def _contacts(self, a: _Account) -> list[_Contact]:
        rng, w = self.rng, self.w
        count = _pick(rng, (1, 2, 3, 4, 5), (35, 65, 83, 93, 100))
        contacts = []
        for i in range(count):
            w.contacts += 1
            gender = "female" if rng.random() < 0.5 else "male"
            first = rng.choice(_FEMALE if gender == "female" else _MALE)
            last = rng.choice(_LAST)
            country = _pick(rng, _COUNTRIES, _COUNTRY_CUM)
            city, tz, _ = rng.choice(country.cities)
            local = f"{first}.{last.replace(' ', '')}".lower() + (str(i) if i else "")
            contacts.append(
                _Contact(
                    uid=f"u-{w.customers + w.contacts:06d}",
                    aid=_anonymous_id(rng),
                    first=first,
                    last=last,
                    email=f"{local}@{a.domain}",
                    title=rng.choice(_TITLES),
                    gender=gender,
                    age=int(rng.triangular(24, 64, 38)),
                    country=country,
                    city=city,
                    timezone=tz,
                    ip=_ip(rng),
                    user_agent=rng.choice(_USER_AGENTS[:2] + _USER_AGENTS[4:]),
                    phone=_phone(rng, country),
                )
            )
        return contacts

    def _group_traits(self, a: _Account, plan: str) -> dict:
        return {
            "name": a.name,
            "industry": a.industry,
            "employees": a.employees,
            "plan": plan,
            "website": a.website,
            "created_at": self.w.iso(a.created),
        }

    def _user_traits(self, a: _Account, c: _Contact, t: int, plan: str) -> dict:
        return {
            "email": c.email,
            "first_name": c.first,
            "last_name": c.last,
            "name": f"{c.first} {c.last}",
            "title": c.title,
            "phone": c.phone,
            "country": c.country.code,
            "city": c.city,
            "age": c.age,
            "gender": c.gender,
            "plan": plan,
            "company": {"id": a.group_id, "name": a.name},
            "created_at": self.w.iso(t),
        }

    def _research(self, a: _Account, c: _Contact) -> None:
        """Anonymous visits to the marketing site before the trial starts."""
        rng = self.rng
        t = a.created - int((1 + rng.expovariate(0.25)) * DAY_MS)
        campaign = (
            {
                "campaign": {
                    "source": "linkedin",
                    "medium": "paid_social",
                    "name": "b2b-lifecycle-webinar",
                }
            }
            if rng.random() < 0.3
            else None
        )
        for i, path in enumerate(("/", "/pricing", "/features", "/customers")[: rng.randint(2, 4)]):
            t += self._gap()
            props = {
                "path": path,
                "url": f"{B2B_SITE}{path}",
                "title": path.strip("/").title() or "Keepers",
                "referrer": "https://www.google.com/" if i == 0 else "",
            }
            ctx = c.client(a.group_id)
            del ctx["groupId"]  # not known yet while anonymous
            if campaign and i == 0:
                ctx.update(campaign)
            a.add(t, _page(None, c.aid, props["title"], props, ctx))

    def _open(self, a: _Account, c: _Contact, t: int) -> None:
        """Sign-up with both ids, group call, Account Created and Trial Started."""
        ctx = c.client
        c.joined = t
        a.add(t, _identify(c.uid, c.aid, self._user_traits(a, c, t, "trial"), ctx(a.group_id)))
        signed = {
            "type": "organic",
            "first_name": c.first,
            "last_name": c.last,
            "email": c.email,
            "plan": "trial",
        }
        a.add(t + 500, _track(c.uid, c.aid, "Signed Up", signed, ctx(a.group_id)))
        a.add(
            t + 900,
            _group(c.uid, c.aid, a.group_id, self._group_traits(a, "trial"), ctx(a.group_id)),
        )
        a.add(
            t + 1200,
            _track(c.uid, c.aid, "Account Created", {"account_name": a.name}, ctx(a.group_id)),
        )
        self._trial_event(a, c, t + 1500, "Trial Started")

    def _trial_event(self, a: _Account, c: _Contact, t: int, event: str) -> None:
        props = {
            "trial_start_date": self.w.iso(a.created),
            "trial_end_date": self.w.iso(a.created + 14 * DAY_MS),
            "trial_plan_name": a.plan.title(),
        }
        a.add(t, _track(c.uid, None, event, props, a.server("app")))

    def _invite(self, a: _Account, inviter: _Contact, c: _Contact, t: int) -> None:
        invite = {
            "invitee_email": c.email,
            "invitee_first_name": c.first,
            "invitee_last_name": c.last,
            "invitee_role": c.title,
        }
        ctx = inviter.client(a.group_id)
        a.add(t, _track(inviter.uid, inviter.aid, "Invite Sent", invite, ctx))
        t += self.rng.randint(10, 48 * 60) * MINUTE_MS
        c.joined = t
        a.add(t, _identify(c.uid, c.aid, self._user_traits(a, c, t, "trial"), c.client(a.group_id)))
        signed = {
            "type": "invited",
            "first_name": c.first,
            "last_name": c.last,
            "email": c.email,
            "invited_by": inviter.uid,
        }
        a.add(t + 500, _track(c.uid, c.aid, "Signed Up", signed, c.client(a.group_id)))
        a.add(
            t + 900,
            _group(c.uid, c.aid, a.group_id, self._group_traits(a, "trial"), c.client(a.group_id)),
        )

    def _usage(
        self, a: _Account, contacts: list[_Contact], start: int, stop: int, per_week: float
    ) -> None:
        """Product usage: app page views (and reports) while the account is engaged."""
        rng = self.rng
        stop = min(stop, self.w.end)
        for c in contacts:
            t = max(start, c.joined)
            while True:
                t += int(rng.expovariate(per_week / 7) * DAY_MS) + HOUR_MS
                if t >= stop:
                    break
                name, path = rng.choice(_APP_PAGES)
                props = {"path": path, "url": f"{APP}{path}", "title": name, "referrer": ""}
                a.add(t, _page(c.uid, c.aid, name, props, c.client(a.group_id)))
                if rng.random() < 0.3:
                    report = {"report_type": rng.choice(("cohorts", "rfm", "funnel", "churn"))}
                    a.add(
                        t + self._gap(),
                        _track(c.uid, c.aid, "Report Created", report, c.client(a.group_id)),
                    )

    def _sales(self, a: _Account, contacts: list[_Contact], trial_end: int) -> None:
        """New-business deal, then yearly renewal deals until lost (the account churns)."""
        end, main = self.w.end, contacts[0]
        won, t = self._deal(a, main, a.created + self._days(2, 6), "new_business", 0.65)
        if not won:
            self._usage(a, contacts, trial_end, trial_end + 21 * DAY_MS, 0.3)
            return
        self._plan_change(a, main, t, a.plan)
        paid_from = anniversary = t
        while anniversary + 330 * DAY_MS < end:
            won, _ = self._deal(a, main, anniversary + 330 * DAY_MS, "renewal", 0.8)
            anniversary += 365 * DAY_MS
            if not won:
                self._usage(a, contacts, paid_from, anniversary, 0.7)
                self._plan_change(a, main, anniversary, "cancelled")
                return
        self._usage(a, contacts, paid_from, end, 0.7)

    def _deal(self, a: _Account, c: _Contact, t: int, kind: str, win: float) -> tuple[bool, int]:
        """Deal Created → Deal Stage Changed … → Deal Won / Deal Lost (from the CRM)."""
        rng = self.rng
        a.deals += 1
        base = {
            "deal_id": f"deal-{a.n:04d}-{a.deals}",
            "deal_name": f"{a.name} {kind}",
            "deal_type": kind,
            "amount": float(round(_PLAN_PRICE[a.plan] * rng.uniform(0.8, 1.4), -2)),
            "currency": "USD",
            "close_date": self.w.date(t + 45 * DAY_MS),
            "owner": a.owner,
        }
        stages = (
            ("qualification", "demo", "proposal", "negotiation")
            if kind == "new_business"
            else ("renewal_review", "negotiation")
        )
        self._deal_event(a, c, t, "Deal Created", base, stages[0])
        for previous, stage in itertools.pairwise(stages):
            t += self._days(3, 18)
            if rng.random() < 0.12:
                self._deal_lost(a, c, t, base, previous)
                return False, t
            self._deal_event(a, c, t, "Deal Stage Changed", base, stage, previous)
        t += self._days(3, 14)
        if rng.random() >= win:
            self._deal_lost(a, c, t, base, stages[-1])
            return False, t
        won = dict(base, close_date=self.w.date(t))
        self._deal_event(a, c, t, "Deal Won", won, "closed_won", stages[-1])
        return True, t

    def _deal_event(
        self,
        a: _Account,
        c: _Contact,
        t: int,
        event: str,
        base: dict,
        stage: str,
        previous: str | None = None,
    ) -> None:
        props = dict(base, stage=stage)
        if previous is not None:
            props["previous_stage"] = previous
        a.add(t, _track(c.uid, None, event, props, a.server("crm")))

    def _deal_lost(self, a: _Account, c: _Contact, t: int, base: dict, previous: str) -> None:
        lost = dict(base, close_date=self.w.date(t), lost_reason=self.rng.choice(_LOST_REASONS))
        self._deal_event(a, c, t, "Deal Lost", lost, "closed_lost", previous)

    def _plan_change(self, a: _Account, c: _Contact, t: int, plan: str) -> None:
        a.add(
            t + MINUTE_MS,
            _group(c.uid, None, a.group_id, self._group_traits(a, plan), a.server("app")),
        )

    def _days(self, low: int, high: int) -> int:
        """Some whole days later, at a different time of day (sales reps work in hours)."""
        return (
            self.rng.randint(low, high) * DAY_MS + self.rng.randint(-4 * 3600, 4 * 3600) * SECOND_MS
        )

    def _gap(self) -> int:
        return self.rng.randint(8, 90) * SECOND_MS


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _utc_end(end: datetime | None) -> datetime:
    """Default: today 00:00 UTC. Naive datetimes are read as UTC."""
    if end is None:
        now = datetime.now(UTC)
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    return end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)


def generate(
    customers: int = 20_000, seed: int = 7, end: datetime | None = None, years: float = 2.0
) -> Iterator[list[dict[str, Any]]]:
    """Yield lists of Segment messages (one list per person / per account, in time order).

    ``customers`` people visit the shop (a share never signs up; referred friends count
    towards it), plus ~1.5 % as many B2B accounts (at least 3). Timestamps lie in
    ``[end - years, end)``. The same ``(customers, seed, end, years)`` gives identical output.
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    if not years > 0:
        raise ValueError("years must be > 0")
    return _run(_World(customers, seed, _utc_end(end), years))


def _run(world: _World) -> Iterator[list[dict[str, Any]]]:
    """Interleave B2B accounts evenly with the shop's people."""
    shop, b2b = _Shop(world), _Accounts(world)
    total = world.customers
    accounts = max(3, round(total * 0.015)) if total else 0
    k = 0
    while world.persons < total:
        while k < accounts and k * total <= world.persons * accounts:
            if batch := b2b.account(k):
                yield batch
            k += 1
        yield from shop.visitor()
    for rest in range(k, accounts):
        if batch := b2b.account(rest):
            yield batch
