"""Deterministic seeded data for the fake Sage server, and the record shapes Sage returns.

Why here: the same code builds seeded records and completes records posted through the admin API
(:func:`normalise`), so both always have Sage's field names, links and consistent amounts
(line ``net + tax = total``; the header sums its lines; ``base_currency_*`` = amount / exchange_rate).

Knobs (all via :func:`build_world`, the CLI and ``FakeSageServer``):

* ``seed``: everything (ids, names, amounts, dates) is a pure function of it. Business ids are
  ``blake2b("fake-sage/<seed>/business/<key>")[:32 hex]``; record ids come from :class:`IdCodec` keyed
  by (seed, business key, stream), so they too depend only on the seed and the record's position.
* ``now``: the fake clock at start; spend covers ``YEARS`` (3) years ending at it.
* ``scale``: multiplies every business's default spend volumes (:data:`BASE_VOLUMES` times the
  business's ``volume_factor``); ``scale=0`` gives reference data only.
* ``volumes``: exact counts per business key and stream, overriding ``scale``, e.g.
  ``{"greenleaf": {"purchase_invoices": 1_000_000}}``. A key that names no seeded business adds one
  (GBP, the common suppliers, owned by the default user, named after the key), so a test or a
  benchmark can have as many companies as it needs: ``{"shop042": {"purchase_invoices": 20}}``.
  Seeded spend records are generated lazily:
  at build time only four compact columns per record are filled (about 40 bytes a record, ~2 s per
  million), bodies are rebuilt from the seed when served.

Seeded shape per business: the UK default chart of accounts, GB tax rates, suppliers (VENDOR) and a
few customers (one deleted), and spend: purchase invoices (1-4 lines), credit notes, quick entries
(INVOICE and CREDIT_NOTE), other payments (mostly OTHER_PAYMENT, some OTHER_PAYMENT_REFUND and
OTHER_RECEIPT); about 3% DRAFT, 2.5% VOID and 2.5% deleted.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.fake_sage.state import (
    Business,
    IdCodec,
    Record,
    SageError,
    StreamStore,
    User,
    World,
    day_text,
    iso,
    parse_instant,
)

YEARS = 3
DAY = 86_400
CENT = Decimal("0.01")
BASE_VOLUMES = {
    "purchase_invoices": 240,
    "purchase_credit_notes": 24,
    "purchase_quick_entries": 60,
    "other_payments": 90,
}
KIND_NORMAL, KIND_DRAFT, KIND_VOID = 0, 1, 2

# ----------------------------------------------------------------------------------- reference data

CURRENCIES = {"GBP": "Pound Sterling (GBP)", "EUR": "Euro (EUR)", "USD": "US Dollar (USD)"}
RATES_PER_GBP = {"EUR": 1.16, "USD": 1.27}

TAX_RATES = (  # id, name, percentage (None = no percentage: exempt / outside scope)
    ("GB_STANDARD", "Standard 20.00%", "20.00"),
    ("GB_LOWER", "Lower 5.00%", "5.00"),
    ("GB_ZERO", "Zero 0.00%", "0.00"),
    ("GB_EXEMPT", "Exempt 0.00%", "0.00"),
    ("GB_NO_TAX", "No VAT", "0.00"),
)

TYPE_NAMES = {
    "SALES": ("Sales", "INCOME"),
    "OTHER_INCOME": ("Other Income", "INCOME"),
    "DIRECT_EXPENSES": ("Direct Expenses", "EXPENDITURE"),
    "OVERHEADS": ("Overheads", "EXPENDITURE"),
    "DEPRECIATION": ("Depreciation", "EXPENDITURE"),
    "CURRENT_ASSETS": ("Current Assets", "ASSET"),
    "FIXED_ASSETS": ("Fixed Assets", "ASSET"),
    "BANK": ("Bank", "ASSET"),
    "CURRENT_LIABILITY": ("Current Liability", "LIABILITY"),
    "TAXES": ("Taxes", "LIABILITY"),
    "EQUITY": ("Equity", "CAPITAL"),
}
GROUP_NAMES = {
    "INCOME": "Income",
    "EXPENDITURE": "Expenditure",
    "ASSET": "Asset",
    "LIABILITY": "Liability",
    "CAPITAL": "Capital",
}

# UK default chart (nominal code, name, ledger_account_type id).
CHART = (
    (10, "Freehold property", "FIXED_ASSETS"),
    (20, "Plant and machinery", "FIXED_ASSETS"),
    (30, "Office equipment", "FIXED_ASSETS"),
    (40, "Furniture and fixtures", "FIXED_ASSETS"),
    (50, "Motor vehicles", "FIXED_ASSETS"),
    (1001, "Stock", "CURRENT_ASSETS"),
    (1100, "Trade debtors", "CURRENT_ASSETS"),
    (1103, "Prepayments", "CURRENT_ASSETS"),
    (1200, "Bank current account", "BANK"),
    (1210, "Bank deposit account", "BANK"),
    (1230, "Petty cash", "BANK"),
    (2100, "Trade creditors", "CURRENT_LIABILITY"),
    (2109, "Accruals", "CURRENT_LIABILITY"),
    (2200, "Sales Tax Control Account", "TAXES"),
    (2201, "Purchase Tax Control Account", "TAXES"),
    (2202, "VAT liability", "TAXES"),
    (2210, "PAYE and NI", "CURRENT_LIABILITY"),
    (3000, "Ordinary shares", "EQUITY"),
    (3200, "Profit and loss account", "EQUITY"),
    (4000, "Sales type A", "SALES"),
    (4010, "Sales type B", "SALES"),
    (4900, "Other income", "OTHER_INCOME"),
    (5000, "Cost of sales - goods", "DIRECT_EXPENSES"),
    (5001, "Cost of sales - materials", "DIRECT_EXPENSES"),
    (5002, "Cost of sales - subcontractors", "DIRECT_EXPENSES"),
    (5100, "Carriage", "DIRECT_EXPENSES"),
    (6201, "Advertising and marketing", "OVERHEADS"),
    (7000, "Gross wages", "OVERHEADS"),
    (7100, "Rent and rates", "OVERHEADS"),
    (7104, "Premises insurance", "OVERHEADS"),
    (7200, "Electricity", "OVERHEADS"),
    (7201, "Gas", "OVERHEADS"),
    (7300, "Motor expenses - fuel", "OVERHEADS"),
    (7301, "Motor expenses - repairs", "OVERHEADS"),
    (7400, "Travelling", "OVERHEADS"),
    (7402, "Hotels", "OVERHEADS"),
    (7500, "Office costs", "OVERHEADS"),
    (7501, "Postage and carriage", "OVERHEADS"),
    (7502, "Telephone and internet", "OVERHEADS"),
    (7504, "Office stationery", "OVERHEADS"),
    (7600, "Legal and professional fees", "OVERHEADS"),
    (7601, "Audit and accountancy fees", "OVERHEADS"),
    (7700, "Equipment hire", "OVERHEADS"),
    (7800, "Repairs and renewals", "OVERHEADS"),
    (7900, "Bank charges and interest", "OVERHEADS"),
    (8000, "Depreciation", "DEPRECIATION"),
    (8100, "Bad debt write off", "OVERHEADS"),
    (8204, "Insurance", "OVERHEADS"),
    (8205, "Refreshments", "OVERHEADS"),
    (7806, "Waste disposal", "OVERHEADS"),  # added by the user: not a default account
)
NOT_IN_CHART = (5002,)  # shows included_in_chart = false


@dataclass(frozen=True)
class VendorSpec:
    """A seeded supplier: what it sells (nominal code and line description, the first is its usual
    one), VAT rate, price band and trading currency. Suppliers post only to accounts that fit what
    they sell (British Gas to gas, the council to rates and waste), as an analyst would expect."""

    name: str
    ref: str
    lines: tuple[tuple[int, str], ...]
    tax: str
    low: int
    high: int
    currency: str | None = None  # None = the business's base currency

    @property
    def code(self) -> int:
        """The supplier's usual nominal code (its contact's default purchase ledger account)."""
        return self.lines[0][0]


COMMON_VENDORS = (
    VendorSpec(
        "British Gas Business", "BRITGAS", ((7201, "Gas supply"), (7201, "Gas standing charge")), "GB_STANDARD", 80, 600
    ),
    VendorSpec(
        "Octopus Energy",
        "OCTOPUS",
        ((7200, "Electricity supply"), (7200, "Electricity standing charge")),
        "GB_STANDARD",
        120,
        900,
    ),
    VendorSpec(
        "BT Business", "BTBUS", ((7502, "Broadband and phone line"), (7502, "Business mobiles")), "GB_STANDARD", 40, 160
    ),
    VendorSpec("Vodafone UK", "VODAFONE", ((7502, "Mobile phone contract"),), "GB_STANDARD", 25, 120),
    VendorSpec(
        "Landsec Properties", "LANDSEC", ((7100, "Office rent"), (7100, "Service charge")), "GB_EXEMPT", 1500, 4000
    ),
    VendorSpec(
        "Westminster City Council",
        "WCC",
        ((7100, "Business rates"), (7806, "Trade waste collection")),
        "GB_NO_TAX",
        300,
        1200,
    ),
    VendorSpec("Shell UK Fuel", "SHELL", ((7300, "Diesel"), (7300, "Fuel card")), "GB_STANDARD", 40, 180),
    VendorSpec("Trainline", "TRAINLIN", ((7400, "Rail tickets"),), "GB_ZERO", 20, 250),
    VendorSpec("Premier Inn", "PREMINN", ((7402, "Hotel stay"),), "GB_STANDARD", 60, 180),
    VendorSpec(
        "Viking Direct",
        "VIKING",
        ((7504, "Office stationery"), (7504, "Printer paper and toner")),
        "GB_STANDARD",
        15,
        300,
    ),
    VendorSpec("Royal Mail", "ROYALMAI", ((7501, "Postage"), (7501, "Parcel delivery")), "GB_EXEMPT", 5, 90),
    VendorSpec(
        "Hargreaves & Co Accountants",
        "HARGREAV",
        ((7601, "Annual accounts"), (7601, "Payroll bureau")),
        "GB_STANDARD",
        250,
        1800,
    ),
    VendorSpec(
        "Fraser Legal LLP", "FRASERLG", ((7600, "Legal advice"), (7600, "Lease review")), "GB_STANDARD", 200, 2500
    ),
    VendorSpec("Speedy Hire", "SPEEDY", ((7700, "Equipment hire"),), "GB_STANDARD", 50, 700),
    VendorSpec("Dell Technologies UK", "DELL", ((30, "Laptop"), (30, "Monitor")), "GB_STANDARD", 400, 2200),
    VendorSpec("Aviva Insurance", "AVIVA", ((8204, "Business insurance premium"),), "GB_EXEMPT", 80, 900),
    VendorSpec("Microsoft UK", "MSFT", ((7500, "Microsoft 365 subscription"),), "GB_STANDARD", 10, 60),
)
BAKERY_VENDORS = (
    VendorSpec("Shipton Mill", "SHIPTON", ((5000, "Organic flour"), (5000, "Rye flour")), "GB_ZERO", 150, 1400),
    VendorSpec(
        "Booker Wholesale",
        "BOOKER",
        ((5000, "Butter and dairy"), (5000, "Sugar and yeast"), (8205, "Tea and coffee")),
        "GB_ZERO",
        80,
        900,
    ),
    VendorSpec(
        "Brakes Foodservice", "BRAKES", ((5000, "Food ingredients"), (5000, "Dairy and cream")), "GB_ZERO", 100, 1200
    ),
    VendorSpec(
        "Smurfit Kappa Packaging", "SMURFIT", ((5001, "Cardboard boxes"), (5001, "Packaging")), "GB_STANDARD", 60, 500
    ),
    VendorSpec("Rational Ovens Service", "RATIONAL", ((7800, "Oven service"),), "GB_STANDARD", 120, 900),
)
JOINERY_VENDORS = (
    VendorSpec("Travis Perkins", "TRAVISP", ((5001, "Timber"), (5001, "Plaster and cement")), "GB_STANDARD", 100, 2500),
    VendorSpec("Howdens Joinery", "HOWDENS", ((5000, "Kitchen furniture units"),), "GB_STANDARD", 200, 3000),
    VendorSpec("Screwfix", "SCREWFIX", ((5001, "Screws and fixings"), (5001, "Hand tools")), "GB_STANDARD", 15, 400),
    VendorSpec("Holzwerk Bayern GmbH", "HOLZWERK", ((5001, "Oak timber"),), "GB_ZERO", 800, 6000, "EUR"),
    VendorSpec("Bois de France SARL", "BOISFR", ((5001, "Timber boards"),), "GB_ZERO", 500, 4000, "EUR"),
    VendorSpec("Pacific Tool Supply Inc", "PACTOOL", ((20, "Bandsaw"),), "GB_ZERO", 300, 3000, "USD"),
    VendorSpec("Lumber Direct LLC", "LUMBERUS", ((5000, "Lumber"),), "GB_ZERO", 600, 5000, "USD"),
)
ATLANTIC_VENDORS = (
    VendorSpec("ESB Networks", "ESB", ((7200, "Electricity supply"),), "GB_STANDARD", 150, 900),
    VendorSpec("Eir Business", "EIR", ((7502, "Broadband"),), "GB_STANDARD", 40, 200),
    VendorSpec("Maxol Fuel", "MAXOL", ((7300, "Diesel"),), "GB_STANDARD", 40, 200),
    VendorSpec("Rotterdam Freight BV", "RTMFRT", ((5100, "Sea freight"),), "GB_ZERO", 300, 3000),
    VendorSpec("Dublin Port Company", "DUBPORT", ((5100, "Port handling"),), "GB_EXEMPT", 200, 1500),
    VendorSpec("Office Depot Europe", "ODEU", ((7504, "Office stationery"),), "GB_STANDARD", 20, 300),
    VendorSpec("Kilkenny Legal", "KILKLEG", ((7600, "Legal fees"),), "GB_STANDARD", 300, 2000),
    VendorSpec("Regus Dublin", "REGUS", ((7100, "Serviced office"),), "GB_EXEMPT", 900, 2500),
    VendorSpec("Aviva Insurance", "AVIVA", ((8204, "Business insurance premium"),), "GB_EXEMPT", 80, 900),
)


@dataclass(frozen=True)
class BusinessSpec:
    """A seeded business."""

    key: str
    name: str
    owner: str  # user login
    base_currency: str
    multi_currency: bool
    vendors: tuple[VendorSpec, ...]
    customers: tuple[str, ...]
    city: str
    volume_factor: float = 1.0


USERS = (("demo@example.com", "Demo", "User"), ("other@example.com", "Olivia", "Other"))
BUSINESSES = (
    BusinessSpec(
        "greenleaf",
        "Greenleaf Bakery Ltd",
        "demo@example.com",
        "GBP",
        False,
        COMMON_VENDORS + BAKERY_VENDORS,
        ("Riverside Cafe", "Hilltop Hotel", "Corner Deli", "St Mary's School"),
        "Bristol",
    ),
    BusinessSpec(
        "northwind",
        "Northwind Joinery Ltd",
        "demo@example.com",
        "GBP",
        True,
        COMMON_VENDORS + JOINERY_VENDORS,
        ("Oak & Ash Interiors", "Harrow Homes", "Kestrel Developments", "J. Patel"),
        "Leeds",
    ),
    BusinessSpec(
        "atlantic",
        "Atlantic Trading Ltd",
        "demo@example.com",
        "EUR",
        False,
        ATLANTIC_VENDORS,
        ("Galway Imports", "Cork Retail Group", "Brest Marine SA", "Liffey Foods"),
        "London",
    ),
    BusinessSpec(
        "harbour",
        "Harbour Cafe Ltd",
        "other@example.com",
        "GBP",
        False,
        COMMON_VENDORS[:8] + BAKERY_VENDORS[1:3],
        ("Walk-in customers",),
        "Plymouth",
        volume_factor=0.25,
    ),
)

TRANSACTION_TYPES = {
    "PURCHASE_INVOICE": "Purchase Invoice",
    "PURCHASE_CREDIT_NOTE": "Purchase Credit Note",
    "PURCHASE_QUICK_ENTRY_INVOICE": "Purchase QE Invoice",
    "PURCHASE_QUICK_ENTRY_CREDIT_NOTE": "Purchase QE Credit Note",
    "OTHER_PAYMENT": "Other Payment",
    "OTHER_RECEIPT": "Other Receipt",
    "OTHER_PAYMENT_REFUND": "Other Payment Refund",
    "OTHER_RECEIPT_REFUND": "Other Receipt Refund",
}
STATUSES = {"DRAFT": "Draft", "UNPAID": "Unpaid", "PART_PAID": "Part Paid", "PAID": "Paid", "VOID": "Void"}
PAYMENT_METHODS = {
    "BANK_TRANSFER": "Bank Transfer",
    "CREDIT_DEBIT": "Credit/Debit Card",
    "CASH": "Cash",
    "CHECK": "Cheque",
    "ALTERNATIVE_PAYMENT": "Alternative Payment",
}
QUICK_ENTRY_TYPES = {"INVOICE": "Invoice", "CREDIT_NOTE": "Credit Note"}
VOID_REASONS = ("Duplicate entry", "Entered in error", "Supplier cancelled the order")
LINE_KEY = {
    "purchase_invoices": "invoice_lines",
    "purchase_credit_notes": "credit_note_lines",
    "other_payments": "payment_lines",
}
PREFIX = {
    "purchase_invoices": "PI",
    "purchase_credit_notes": "PCN",
    "purchase_quick_entries": "QE",
    "other_payments": "OP",
}


# ------------------------------------------------------------------------------------------ helpers


def hex_id(*parts: object) -> str:
    """A deterministic 32-hex id (Sage ids look like this)."""
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()


EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def utc_day(ts: int) -> int:
    """The UTC calendar day (proleptic ordinal) of an epoch instant, without the local time zone."""
    return EPOCH_ORDINAL + ts // DAY


def money(value: Decimal) -> str:
    """Sage money: a decimal string with two places."""
    return str(value.quantize(CENT, ROUND_HALF_UP))


def dec(value: Any) -> Decimal:
    """Parse a string or number amount without going through binary floats."""
    return Decimal(str(value))


def link(kind: str, item_id: str, displayed_as: str) -> Record:
    """Sage's Base reference object."""
    return {"id": item_id, "displayed_as": displayed_as, "$path": f"/{kind}/{item_id}"}


def _uuid(*parts: object) -> str:
    h = hex_id(*parts)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Context:
    """Per-business lookups used to build links and amounts (kept in sync with admin edits)."""

    seed: int
    spec: BusinessSpec
    base: str
    links: dict[str, dict[str, Record]] = field(default_factory=dict)
    tax_pct: dict[str, Decimal] = field(default_factory=dict)
    contacts: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # id -> name, ref, currency
    account_ids: dict[int, str] = field(default_factory=dict)  # nominal code -> id
    vendor_ids: list[tuple[str, VendorSpec]] = field(default_factory=list)
    customer_ids: list[str] = field(default_factory=list)
    bank: Record = field(default_factory=dict)

    def resolve(self, stream: str, value: Any, source: str) -> Record:
        """A Base link for an id or ``{"id": ...}``; 422 if the business has no such record."""
        item_id = value.get("id") if isinstance(value, dict) else value
        found = self.links.get(stream, {}).get(str(item_id))
        if found is None:
            raise SageError(422, "RecordInvalid", f"Unknown {stream} id {item_id!r}.", source)
        return dict(found)

    def rate(self, currency: str, day: int) -> Decimal:
        """Deterministic daily exchange rate, foreign units per one unit of base currency."""
        if currency == self.base:
            return Decimal("1.0")
        base = RATES_PER_GBP.get(currency, 1.0) / RATES_PER_GBP.get(self.base, 1.0)
        return Decimal(f"{base * (1 + 0.04 * math.sin(day / 45)):.6f}")


# ------------------------------------------------------------------------------------- world build


def build_world(
    seed: int, now: int, scale: float = 1.0, volumes: Mapping[str, Mapping[str, int]] | None = None
) -> World:
    """Users and businesses for ``seed``, with spend ending at ``now`` (see the module docstring)."""
    volumes = volumes or {}
    users = [User(_uuid("fake-sage", seed, "user", login), login, first, last, []) for login, first, last in USERS]
    by_login = {u.login: u for u in users}
    businesses: dict[str, Business] = {}
    seeded = {spec.key for spec in BUSINESSES}
    extra = tuple(_extra_spec(key) for key in sorted(volumes) if key not in seeded)
    for slot, spec in enumerate(BUSINESSES + extra):
        owner = by_login[spec.owner]
        business = _build_business(seed, slot, spec, owner, now, volumes=volumes.get(spec.key, {}), scale=scale)
        owner.business_ids.append(business.id)
        businesses[business.id] = business
    return World(users, businesses)


def _extra_spec(key: str) -> BusinessSpec:
    """A plain GBP business for a ``volumes`` key that names no seeded one."""
    return BusinessSpec(
        key,
        f"{key.replace('_', ' ').title()} Ltd",
        USERS[0][0],
        "GBP",
        False,
        COMMON_VENDORS,
        ("Walk-in customers",),
        "London",
    )


def business_id(seed: int, key: str) -> str:
    """The id of a seeded business (stable for a seed)."""
    return hex_id("fake-sage", seed, "business", key)


def _build_business(
    seed: int, slot: int, spec: BusinessSpec, owner: User, now: int, *, volumes: Mapping[str, int], scale: float
) -> Business:
    bid = business_id(seed, spec.key)
    start = now - YEARS * 365 * DAY
    created = start - 40 * DAY + slot * 3600
    ctx = Context(seed, spec, spec.base_currency)
    stores = {
        name: StreamStore(name, None if name == "tax_rates" else IdCodec(seed, spec.key, name))
        for name in ("ledger_accounts", "contacts", "tax_rates", *BASE_VOLUMES)
    }
    business = Business(
        bid,
        spec.key,
        spec.name,
        owner.id,
        spec.base_currency,
        _business_record(bid, spec, created),
        _financial_settings(spec, created, now),
        stores,
        ctx,
    )
    _seed_tax_rates(business, created)
    _seed_ledger_accounts(business, created)
    _seed_contacts(business, created, now)
    for stream, base_count in BASE_VOLUMES.items():
        count = volumes.get(stream, round(base_count * scale * spec.volume_factor))
        _seed_spend(business, stream, count, start, now)
    return business


def _business_record(bid: str, spec: BusinessSpec, created: int) -> Record:
    return {
        "id": bid,
        "displayed_as": spec.name,
        "$path": f"/businesses/{bid}",
        "name": spec.name,
        "address_line_1": "1 High Street",
        "address_line_2": None,
        "city": spec.city,
        "postal_code": "AB1 2CD",
        "country": {"id": "GB", "displayed_as": "United Kingdom (GB)", "$path": "/countries/GB"},
        "region": None,
        "telephone": "01234 567890",
        "mobile": None,
        "website": None,
        "is_demo": False,
        "ni_based": False,
        "created_at": iso(created),
        "updated_at": iso(created),
        "subscriptions": [
            {
                "id": "ACCOUNTING",
                "displayed_as": "Accounting Plus",
                "active": True,
                "status": "active",
                "created_at": iso(created),
                "updated_at": iso(created),
            }
        ],
    }


def _financial_settings(spec: BusinessSpec, created: int, now: int) -> Record:
    year = date.fromordinal(utc_day(now)).year
    base = spec.base_currency
    return {
        "$path": "/financial_settings",
        "year_end_date": f"{year + 1}-03-31",
        "year_end_lockdown_date": None,
        "accounting_type": "accrual",
        "accounts_start_date": day_text(utc_day(created)),
        "base_currency": link("currencies", base, CURRENCIES[base]),
        "multi_currency_enabled": spec.multi_currency,
        "use_live_exchange_rates": spec.multi_currency,
        "mtd_activation_status": "active",
        "mtd_connected": True,
        "mtd_authenticated_date": iso(created),
        "tax_scheme": {"id": "STANDARD", "displayed_as": "Standard", "$path": "/tax_schemes/STANDARD"},
        "tax_return_frequency": {
            "id": "QUARTERLY",
            "displayed_as": "Quarterly",
            "$path": "/tax_return_frequencies/QUARTERLY",
        },
        "tax_number": "GB" + str(int(hex_id(spec.key, "vat"), 16))[:9],
        "general_tax_number": "",
        "tax_office": None,
        "default_irpf_rate": "0.0",
        "flat_rate_tax_percentage": None,
        "recoverable_percentage": None,
        "sales_tax_calculation": None,
        "purchase_tax_calculation": None,
        "updated_at": iso(created),
        "postponed_accounting": False,
        "destination_vat": False,
    }


def _seed_tax_rates(business: Business, created: int) -> None:
    for rate_id, name, pct in TAX_RATES:
        record = {
            "id": rate_id,
            "name": name,
            "percentage": pct,
            "created_at": iso(created),
            "updated_at": iso(created),
            "deleted_at": None,
        }
        business.stores["tax_rates"].add(normalise(business, "tax_rates", record, 0, created))


def _seed_ledger_accounts(business: Business, created: int) -> None:
    store = business.stores["ledger_accounts"]
    for code, name, type_id in CHART:
        record = {
            "id": store.id_of(len(store)),
            "name": name,
            "nominal_code": code,
            "ledger_account_type": {"id": type_id},
            "included_in_chart": code not in NOT_IN_CHART,
            "created_at": iso(created),
            "updated_at": iso(created),
        }
        store.add(normalise(business, "ledger_accounts", record, len(store), created))
    ctx: Context = business.context
    bank_id = hex_id(business.id, "bank")
    ctx.bank = link("bank_accounts", bank_id, "Current (1200)")


def _seed_contacts(business: Business, created: int, now: int) -> None:
    spec: BusinessSpec = business.context.spec
    store = business.stores["contacts"]
    rng = random.Random(f"{business.context.seed}/{spec.key}/contacts")
    entries = [(v.name, v.ref, "VENDOR", v) for v in spec.vendors]
    entries += [
        (name, "".join(ch for ch in name.upper() if ch.isalpha())[:8], "CUSTOMER", None) for name in spec.customers
    ]
    for n, (name, ref, contact_type, vendor) in enumerate(entries):
        made = created + n * 3600
        changed = made if rng.random() < 0.7 else made + rng.randint(DAY, 400 * DAY)
        record = {
            "id": store.id_of(len(store)),
            "name": name,
            "reference": ref,
            "contact_types": [{"id": contact_type}],
            "currency": {"id": (vendor.currency if vendor else None) or business.base_currency},
            "created_at": iso(made),
            "updated_at": iso(min(changed, now)),
            "deleted_at": None,
        }
        if vendor is not None:
            ctx: Context = business.context
            record["default_purchase_ledger_account"] = {"id": ctx.account_ids[vendor.code]}
        index = len(store)
        store.add(normalise(business, "contacts", record, index, made))
        if vendor is not None:
            business.context.vendor_ids.append((store.id_of(index), vendor))
        else:
            business.context.customer_ids.append(store.id_of(index))
    if len(spec.customers) > 1:  # one customer was deleted some days ago
        last = len(store) - 1
        record = store.get(last)
        record["deleted_at"] = iso(now - 10 * DAY)
        store.put(last, record)


def _seed_spend(business: Business, stream: str, count: int, start: int, now: int) -> None:
    """Fill the compact columns for ``count`` lazily generated records of ``stream``."""
    store = business.stores[stream]
    rng = random.Random(f"{business.context.seed}/{business.key}/{stream}/meta")
    step = (now - start) / max(count, 1)
    start_day = utc_day(start)
    has_status = stream in ("purchase_invoices", "purchase_credit_notes")
    for i in range(count):
        created = min(start + int((i + rng.random()) * step), now)
        day = max(start_day, utc_day(created) - rng.randint(0, 10))
        roll = rng.random()
        kind = KIND_DRAFT if has_status and roll < 0.03 else KIND_VOID if has_status and roll < 0.055 else 0
        updated = created
        if kind == KIND_VOID or rng.random() < 0.15:
            updated = min(now, created + rng.randint(60, 90 * DAY))
        deleted = 0
        if rng.random() < 0.025:
            deleted = min(now, updated + rng.randint(60, 30 * DAY))
        store.append_meta(created, updated, day, deleted, kind)
    store.body = _body_factory(business, stream, now)


# ----------------------------------------------------------------------------------- lazy bodies


def _body_factory(business: Business, stream: str, now: int) -> Any:
    ctx: Context = business.context
    store = business.stores[stream]
    salt = int(hex_id(ctx.seed, business.key, stream, "body")[:12], 16)
    now_day = utc_day(now)

    def body(index: int) -> Record:
        rng = random.Random(salt + index)
        day = store.day[index]
        record: Record = {
            "id": store.id_of(index),
            "created_at": iso(store.created[index]),
            "updated_at": iso(store.updated[index]),
            "deleted_at": iso(store.deleted[index]) if store.deleted[index] else None,
            "date": day_text(day),
        }
        if stream == "other_payments":
            _other_payment_raw(ctx, rng, record)
        else:
            _purchase_raw(ctx, rng, record, stream, kind=store.kind[index], day=day, now_day=now_day)
        result = normalise(business, stream, record, index, now)
        if result.get("status", {}).get("id") == "PART_PAID":
            _part_pay(result, Decimal(rng.randint(10, 90)) / 100)
        return result

    return body


def _pick_vendor(ctx: Context, rng: random.Random) -> tuple[str, VendorSpec]:
    return ctx.vendor_ids[rng.randrange(len(ctx.vendor_ids))]


def _raw_line(ctx: Context, rng: random.Random, vendor: VendorSpec) -> Record:
    code, text = vendor.lines[0] if rng.random() < 0.7 else rng.choice(vendor.lines)
    tax = vendor.tax if rng.random() < 0.85 else rng.choice(("GB_STANDARD", "GB_ZERO", "GB_LOWER"))
    quantity = rng.choice((1, 1, 1, 1, 2, 3, 5, 10))
    unit = Decimal(rng.randint(vendor.low * 100, vendor.high * 100)) / 100 / quantity
    account = ctx.links["ledger_accounts"][ctx.account_ids[code]]
    return {
        "description": text,
        "ledger_account": {"id": account["id"]},
        "tax_rate": {"id": tax},
        "quantity": f"{quantity}.0",
        "unit_price": money(unit),
    }


def _purchase_raw(
    ctx: Context, rng: random.Random, record: Record, stream: str, *, kind: int, day: int, now_day: int
) -> None:
    vendor_id, vendor = _pick_vendor(ctx, rng)
    currency = vendor.currency or ctx.base
    record["contact"] = {"id": vendor_id}
    record["due_date"] = day_text(day + 30)
    record["vendor_reference"] = f"{vendor.ref[:4]}-{rng.randint(10000, 99999)}"
    record["currency"] = {"id": currency}
    record["exchange_rate"] = str(ctx.rate(currency, day))
    if kind == KIND_DRAFT:
        status = "DRAFT"
    elif kind == KIND_VOID:
        status = "VOID"
        record["void_reason"] = rng.choice(VOID_REASONS)
    else:
        status = _status_by_age(rng, day, now_day)
    record["status"] = {"id": status}
    if stream == "purchase_quick_entries":
        credit = rng.random() < 0.15
        line = _raw_line(ctx, rng, vendor)
        record["quick_entry_type"] = {"id": "CREDIT_NOTE" if credit else "INVOICE"}
        record["ledger_account"] = line["ledger_account"]
        record["tax_rate"] = line["tax_rate"]
        record["details"] = line["description"]
        record["net_amount"] = money(dec(line["unit_price"]) * dec(line["quantity"]))
        record["reference"] = record.pop("vendor_reference")
        record["currency"] = {"id": ctx.base}
        record["exchange_rate"] = "1.0"
        return
    lines = [_raw_line(ctx, rng, vendor) for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4)))]
    if stream == "purchase_credit_notes":
        for line in lines:
            line["unit_price"] = money(dec(line["unit_price"]) * Decimal(rng.randint(5, 60)) / 100)
        record["original_invoice_date"] = day_text(day - rng.randint(5, 60))
        record["original_invoice_number"] = f"{vendor.ref[:4]}-{rng.randint(10000, 99999)}"
    record[LINE_KEY[stream]] = lines


def _status_by_age(rng: random.Random, day: int, now_day: int) -> str:
    """Bills older than ~60 days are mostly paid; recent ones mostly unpaid.

    Age is measured against the seed's "now" (not the moving clock) so a body never changes unless
    the record is edited.
    """
    roll = rng.random()
    if now_day - day > 60:
        return "PAID" if roll < 0.95 else "PART_PAID"
    return "UNPAID" if roll < 0.6 else "PART_PAID" if roll < 0.8 else "PAID"


def _other_payment_raw(ctx: Context, rng: random.Random, record: Record) -> None:
    roll = rng.random()
    ttype = "OTHER_PAYMENT" if roll < 0.85 else "OTHER_PAYMENT_REFUND" if roll < 0.93 else "OTHER_RECEIPT"
    record["transaction_type"] = {"id": ttype}
    record["payment_method"] = {"id": rng.choice(("BANK_TRANSFER", "CREDIT_DEBIT", "CREDIT_DEBIT", "CASH"))}
    vendor_id, vendor = _pick_vendor(ctx, rng)
    if ttype == "OTHER_RECEIPT":
        record["contact"] = {"id": rng.choice(ctx.customer_ids)} if rng.random() < 0.6 else None
        lines = [
            {
                "ledger_account": {"id": ctx.account_ids[4900]},
                "details": "Sundry receipt",
                "tax_rate": {"id": "GB_STANDARD"},
                "net_amount": money(Decimal(rng.randint(1000, 50000)) / 100),
            }
        ]
    else:
        record["contact"] = {"id": vendor_id} if rng.random() < 0.7 else None
        lines = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            raw = _raw_line(ctx, rng, vendor if vendor.currency is None else COMMON_VENDORS[6])
            lines.append(
                {
                    "ledger_account": raw["ledger_account"],
                    "details": raw["description"],
                    "tax_rate": raw["tax_rate"],
                    "net_amount": money(dec(raw["unit_price"]) * dec(raw["quantity"])),
                }
            )
    record["reference"] = f"{PREFIX['other_payments']}-{rng.randint(100000, 999999)}"
    record["payment_lines"] = lines


def _part_pay(record: Record, fraction: Decimal) -> None:
    total = dec(record["total_amount"])
    outstanding = (total * fraction).quantize(CENT, ROUND_HALF_UP)
    record["outstanding_amount"] = money(outstanding)
    record["total_paid"] = money(total - outstanding)
    rate = dec(record.get("exchange_rate") or "1")
    record["base_currency_outstanding_amount"] = money(outstanding / rate)


# -------------------------------------------------------------------------------------- normalise


def normalise(business: Business, stream: str, record: Record, index: int, now: int) -> Record:
    """Complete a record into Sage's shape: links, labels, derived amounts; keeps given values."""
    ctx: Context = business.context
    rec = dict(record)
    rec.setdefault("created_at", iso(now))
    rec.setdefault("updated_at", rec["created_at"])
    rec.setdefault("deleted_at", None)
    builders = {
        "tax_rates": _tax_rate,
        "ledger_accounts": _ledger_account,
        "contacts": _contact,
        "purchase_invoices": _purchase_document,
        "purchase_credit_notes": _purchase_document,
        "purchase_quick_entries": _quick_entry,
        "other_payments": _other_payment,
    }
    rec = builders[stream](ctx, stream, rec, index, now)
    rec["$path"] = f"/{stream}/{rec['id']}"
    for key in ("created_at", "updated_at", "deleted_at"):
        value = rec.get(key)
        if value and not (isinstance(value, str) and len(value) == 20 and value.endswith("Z")):
            rec[key] = iso(parse_instant(str(value)))  # canonical form for admin-supplied values
    return _ordered(rec)


def _ordered(rec: Record) -> Record:
    """id, displayed_as, $path first, as Sage prints them."""
    head = {k: rec[k] for k in ("id", "displayed_as", "$path") if k in rec}
    return {**head, **{k: v for k, v in rec.items() if k not in head}}


def _take_link(ctx: Context, rec: Record, name: str, stream: str, required: bool) -> Record | None:
    value = rec.pop(f"{name}_id", None) or rec.get(name)
    if not value:
        if required:
            raise SageError(422, "RecordInvalid", f"{name} is required.", name)
        rec[name] = None
        return None
    rec[name] = ctx.resolve(stream, value, name)
    return rec[name]


def _label(rec: Record, name: str, kind: str, labels: Mapping[str, str], default: str) -> str:
    value = rec.pop(f"{name}_id", None) or rec.get(name) or default
    item_id = value.get("id") if isinstance(value, dict) else str(value)
    if item_id not in labels:
        raise SageError(422, "RecordInvalid", f"Unknown {name} {item_id!r}.", name)
    rec[name] = link(kind, item_id, labels[item_id])
    return item_id


def _tax_rate(ctx: Context, stream: str, rec: Record, index: int, now: int) -> Record:
    pct = money(dec(rec.get("percentage", "0")))
    name = rec.get("name") or rec["id"]
    rec.update(
        {
            "displayed_as": name,
            "name": name,
            "percentage": pct,
            "percentages": rec.get("percentages") or [{"percentage": pct, "from_date": "2011-01-04", "to_date": None}],
            "is_visible": rec.get("is_visible", True),
            "is_combined_rate": False,
            "component_tax_rates": [],
            "editable": False,
            "deletable": False,
            "agency": None,
            "retailer": False,
        }
    )
    ctx.tax_pct[rec["id"]] = dec(pct)
    ctx.links.setdefault("tax_rates", {})[rec["id"]] = link("tax_rates", rec["id"], name)
    return rec


def _ledger_account(ctx: Context, stream: str, rec: Record, index: int, now: int) -> Record:
    type_id = _label(
        rec, "ledger_account_type", "ledger_account_types", {k: v[0] for k, v in TYPE_NAMES.items()}, "OVERHEADS"
    )
    group = TYPE_NAMES[type_id][1]
    code = int(rec.get("nominal_code", 9999))
    name = rec.get("name") or f"Account {code}"
    expense = type_id in ("DIRECT_EXPENSES", "OVERHEADS", "DEPRECIATION", "FIXED_ASSETS")
    scopes = ["journals", "reporting"] + (["purchasing", "other_payment"] if expense else [])
    scopes += ["sales", "other_receipt"] if group == "INCOME" else []
    scopes += ["bank"] if type_id == "BANK" else []
    default_tax = "GB_STANDARD" if expense or group == "INCOME" else "GB_NO_TAX"
    rec.update(
        {
            "displayed_as": f"{name} ({code})",
            "name": name,
            "display_name": name,
            "nominal_code": code,
            "ledger_account_group": {"id": group, "displayed_as": GROUP_NAMES[group]},
            "visible_scopes": scopes,
            "included_in_chart": rec.get("included_in_chart", True),
            "ledger_account_classification": None,
            "tax_rate": rec.get("tax_rate") or dict(ctx.links["tax_rates"][default_tax]),
            "fixed_tax_rate": False,
            "visible_in_banking": type_id == "BANK",
            "visible_in_expenses": expense,
            "visible_in_journals": True,
            "visible_in_other_payments": expense,
            "visible_in_other_receipts": group == "INCOME",
            "visible_in_reporting": True,
            "visible_in_sales": group == "INCOME",
            "is_control_account": type_id == "TAXES" or code == 2100,
            "control_name": None,
            "display_formatted": f"{code:04d} - {name}",
            "tax_recoverable": None,
            "recoverable_percentage": None,
            "cis_materials": None,
            "cis_labour": None,
        }
    )
    ctx.links.setdefault("ledger_accounts", {})[rec["id"]] = link("ledger_accounts", rec["id"], rec["displayed_as"])
    ctx.account_ids.setdefault(code, rec["id"])
    return rec


def _contact(ctx: Context, stream: str, rec: Record, index: int, now: int) -> Record:
    types = rec.pop("contact_type_ids", None) or rec.get("contact_types") or [{"id": "VENDOR"}]
    labels = {"VENDOR": "Supplier", "CUSTOMER": "Customer"}
    rec["contact_types"] = [
        link(
            "contact_types",
            t.get("id") if isinstance(t, dict) else t,
            labels.get(t.get("id") if isinstance(t, dict) else t, "Other"),
        )
        for t in types
    ]
    name = rec.get("name") or "Unnamed contact"
    ref = rec.get("reference") or "".join(ch for ch in name.upper() if ch.isalnum())[:8]
    currency = _label(rec, "currency", "currencies", CURRENCIES, ctx.base)
    account = rec.get("default_purchase_ledger_account")
    rec.update(
        {
            "displayed_as": f"{name} ({ref})",
            "name": name,
            "reference": ref,
            "default_purchase_ledger_account": ctx.resolve("ledger_accounts", account, "ledger_account")
            if account
            else None,
            "tax_number": rec.get("tax_number") or "GB" + str(int(hex_id(name, "vat"), 16))[:9],
            "email": rec.get("email") or f"accounts@{ref.lower()}.example.com",
            "notes": rec.get("notes"),
            "locale": "en",
            "is_active": True,
            "system": False,
            "deletable": True,
            "gb_based": currency == "GBP",
            "ni_based": False,
            "cis_registered": False,
            "gdpr_obfuscated": False,
        }
    )
    ctx.contacts[rec["id"]] = (name, ref, currency)
    ctx.links.setdefault("contacts", {})[rec["id"]] = link("contacts", rec["id"], rec["displayed_as"])
    return rec


def _currency_fields(ctx: Context, rec: Record, contact_currency: str | None) -> Decimal:
    currency = _label(rec, "currency", "currencies", CURRENCIES, contact_currency or ctx.base)
    if rec.get("exchange_rate") in (None, ""):
        rec["exchange_rate"] = str(ctx.rate(currency, date.fromisoformat(rec["date"]).toordinal()))
    rate = dec(rec["exchange_rate"])
    rec["exchange_rate"] = str(rate)
    return rate


def _line(ctx: Context, raw: Record, rate: Decimal | None, parent_id: str, n: int, *, text_key: str) -> Record:
    """Complete one line: net = quantity * unit_price, tax = net * rate%, total = net + tax."""
    line = dict(raw)
    line.setdefault("id", hex_id(parent_id, "line", n))
    account = _take_link(ctx, line, "ledger_account", "ledger_accounts", True)
    if not (line.get("tax_rate") or line.get("tax_rate_id")):
        line["tax_rate"] = {"id": "GB_STANDARD"}
    tax_link = _take_link(ctx, line, "tax_rate", "tax_rates", True)
    assert account is not None and tax_link is not None
    pct = ctx.tax_pct[tax_link["id"]]
    if line.get("net_amount") is None:
        quantity = dec(line.get("quantity") or "1")
        unit = dec(line.get("unit_price") or "0")
        line.setdefault("quantity", str(quantity))
        line["net_amount"] = money(quantity * unit)
    net = dec(line["net_amount"])
    tax = dec(line["tax_amount"]) if line.get("tax_amount") is not None else net * pct / 100
    total = (
        dec(line["total_amount"])
        if line.get("total_amount") is not None
        else (net.quantize(CENT, ROUND_HALF_UP) + tax.quantize(CENT, ROUND_HALF_UP))
    )
    line.update({"net_amount": money(net), "tax_amount": money(tax), "total_amount": money(total)})
    line.setdefault(text_key, account["displayed_as"])
    line["displayed_as"] = line[text_key]
    line["tax_breakdown"] = [{"tax_rate": tax_link, "percentage": money(pct), "amount": line["tax_amount"]}]
    if rate is not None:
        if line.get("unit_price") is not None:
            line["unit_price"] = money(dec(line["unit_price"]))
            line.setdefault("base_currency_unit_price", money(dec(line["unit_price"]) / rate))
        base_net = dec(line.get("base_currency_net_amount") or money(net / rate))
        base_tax = dec(line.get("base_currency_tax_amount") or money(tax / rate))
        line["base_currency_net_amount"] = money(base_net)
        line["base_currency_tax_amount"] = money(base_tax)
        line.setdefault("base_currency_total_amount", money(base_net + base_tax))
        line["base_currency_tax_breakdown"] = [
            {"tax_rate": tax_link, "percentage": money(pct), "amount": line["base_currency_tax_amount"]}
        ]
        line.setdefault("unit_price_includes_tax", False)
        line.setdefault("trade_of_asset", False)
    return _ordered(line)


def _sum_header(rec: Record, lines: list[Record], with_base: bool) -> None:
    keys = ["net_amount", "tax_amount", "total_amount"]
    if with_base:
        keys += ["base_currency_net_amount", "base_currency_tax_amount", "base_currency_total_amount"]
    for key in keys:
        if rec.get(key) is None:
            rec[key] = money(sum((dec(line[key]) for line in lines), Decimal(0)))
        else:
            rec[key] = money(dec(rec[key]))


def _settlement(rec: Record, rate: Decimal) -> None:
    """outstanding / total_paid consistent with the status unless given."""
    status = rec["status"]["id"]
    total = dec(rec["total_amount"])
    if rec.get("outstanding_amount") is None:
        outstanding = {"PAID": Decimal(0), "VOID": Decimal(0), "PART_PAID": total * Decimal("0.4")}.get(status, total)
        rec["outstanding_amount"] = money(outstanding)
    outstanding = dec(rec["outstanding_amount"])
    rec["outstanding_amount"] = money(outstanding)
    if rec.get("total_paid") is None:
        rec["total_paid"] = money(Decimal(0) if status == "VOID" else total - outstanding)
    if rec.get("base_currency_outstanding_amount") is None:
        rec["base_currency_outstanding_amount"] = money(outstanding / rate)
    if status != "VOID":
        rec["void_reason"] = None
    else:
        rec.setdefault("void_reason", "Voided")


def _contact_fields(ctx: Context, rec: Record, required: bool) -> str | None:
    contact = _take_link(ctx, rec, "contact", "contacts", required)
    if contact is None:
        return None
    name, ref, currency = ctx.contacts[contact["id"]]
    if rec.get("contact_name") is None:
        rec["contact_name"] = name
    if rec.get("contact_reference") is None:
        rec["contact_reference"] = ref
    return currency


def _transaction(rec: Record, type_id: str) -> None:
    rec["transaction_type"] = link("transaction_types", type_id, TRANSACTION_TYPES[type_id])
    tx = hex_id(rec["id"], "transaction")
    rec["transaction"] = link("transactions", tx, rec.get("reference") or TRANSACTION_TYPES[type_id])


def _purchase_document(ctx: Context, stream: str, rec: Record, index: int, now: int) -> Record:
    credit = stream == "purchase_credit_notes"
    rec.setdefault("date", day_text(utc_day(now)))
    rec.setdefault("due_date", day_text(date.fromisoformat(rec["date"]).toordinal() + 30))
    rec.setdefault("reference", f"{PREFIX[stream]}-{index + 1}")
    rec.setdefault("vendor_reference", None)
    rec.setdefault("notes", None)
    currency = _contact_fields(ctx, rec, True)
    rate = _currency_fields(ctx, rec, currency)
    rec["inverse_exchange_rate"] = (str if credit else float)(
        (Decimal(1) / rate).quantize(Decimal("0.000001"))
    )  # the spec types it string on credit notes
    key = LINE_KEY[stream]
    lines = [_line(ctx, raw, rate, rec["id"], n, text_key="description") for n, raw in enumerate(rec.get(key) or [])]
    if not lines:
        raise SageError(422, "RecordInvalid", f"{key} must have at least one line.", key)
    rec[key] = lines
    _sum_header(rec, lines, True)
    _label(rec, "status", "artefact_statuses", STATUSES, "UNPAID")
    _settlement(rec, rate)
    _transaction(rec, "PURCHASE_CREDIT_NOTE" if credit else "PURCHASE_INVOICE")
    rec["displayed_as"] = rec.get("vendor_reference") or rec["reference"]
    rec["total_quantity"] = money(sum((dec(line.get("quantity") or "1") for line in lines), Decimal(0)))
    rec.setdefault("tax_calculation_method", None)
    rec.setdefault("editable", rec["status"]["id"] != "VOID")
    if credit:
        rec.setdefault("original_invoice_date", None)
        rec.setdefault("original_invoice_number", None)
    return rec


def _quick_entry(ctx: Context, stream: str, rec: Record, index: int, now: int) -> Record:
    rec.setdefault("date", day_text(utc_day(now)))
    rec.setdefault("due_date", day_text(date.fromisoformat(rec["date"]).toordinal() + 30))
    rec.setdefault("reference", f"{PREFIX[stream]}-{index + 1}")
    qtype = _label(rec, "quick_entry_type", "quick_entry_types", QUICK_ENTRY_TYPES, "INVOICE")
    currency = _contact_fields(ctx, rec, True)
    rate = _currency_fields(ctx, rec, currency)
    rec["inverse_exchange_rate"] = float((Decimal(1) / rate).quantize(Decimal("0.000001")))
    line = _line(
        ctx,
        {
            k: rec.get(k)
            for k in (
                "ledger_account",
                "ledger_account_id",
                "tax_rate",
                "tax_rate_id",
                "net_amount",
                "tax_amount",
                "total_amount",
                "details",
            )
            if rec.get(k) is not None
        },
        rate,
        rec["id"],
        0,
        text_key="details",
    )
    for key in (
        "ledger_account",
        "tax_rate",
        "net_amount",
        "tax_amount",
        "total_amount",
        "details",
        "tax_breakdown",
        "base_currency_net_amount",
        "base_currency_tax_amount",
        "base_currency_total_amount",
        "base_currency_tax_breakdown",
    ):
        rec[key] = line[key]
    rec.pop("ledger_account_id", None)
    rec.pop("tax_rate_id", None)
    _label(rec, "status", "artefact_statuses", STATUSES, "UNPAID")
    _settlement(rec, rate)
    _transaction(rec, f"PURCHASE_QUICK_ENTRY_{qtype}")
    rec["displayed_as"] = rec["reference"]
    rec.setdefault("trade_of_asset", False)
    return rec


def _other_payment(ctx: Context, stream: str, rec: Record, index: int, now: int) -> Record:
    rec.setdefault("date", day_text(utc_day(now)))
    rec.setdefault("reference", f"{PREFIX[stream]}-{index + 1}")
    type_id = _label(rec, "transaction_type", "transaction_types", TRANSACTION_TYPES, "OTHER_PAYMENT")
    if not type_id.startswith("OTHER_"):
        raise SageError(422, "RecordInvalid", "Not an other payment transaction type.", "transaction_type")
    _label(rec, "payment_method", "payment_methods", PAYMENT_METHODS, "BANK_TRANSFER")
    _contact_fields(ctx, rec, False)
    rec.pop("contact_name", None)
    rec.pop("contact_reference", None)
    rec.pop("bank_account_id", None)
    rec["bank_account"] = ctx.bank  # the fake has one bank account per business
    lines = [
        _line(ctx, raw, None, rec["id"], n, text_key="details") for n, raw in enumerate(rec.get("payment_lines") or [])
    ]
    if not lines:
        raise SageError(422, "RecordInvalid", "payment_lines must have at least one line.", "payment_lines")
    rec["payment_lines"] = lines
    _sum_header(rec, lines, False)
    _transaction(rec, type_id)
    rec["transaction_type"] = link("transaction_types", type_id, TRANSACTION_TYPES[type_id])
    rec["displayed_as"] = rec["reference"]
    rec.update(
        {
            "editable": True,
            "deletable": True,
            "withholding_tax_rate": None,
            "withholding_tax_amount": None,
            "tax_address_region": None,
        }
    )
    return rec
