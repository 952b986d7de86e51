"""Synthetic Stripe-like data for the emulator, generated inside DuckDB and cached on disk.

Every published Sigma table is created (empty unless listed below) with its published column
names and types. The core payment tables are filled with three years of consistent history:

    customers ─┬─ subscriptions ─ subscription_items ─ prices ─ products
               ├─ invoices ─ invoice_line_items
               └─ charges ─┬─ payment_intents
                           ├─ refunds
                           ├─ disputes
                           └─ balance_transactions ─ (payouts, transfers, Stripe fees)

A populated table stores only its modelled columns (``_data_<name>``, not a published name, so
queries cannot reach it); the published name is a view that adds the other columns as typed
NULLs, which keeps the file small and generation fast.

All randomness is ``hash(row index, salt, seed)`` evaluated by DuckDB, so a (scale, seed) pair
always yields the same bytes, a different seed yields different data, and no Python loop touches
a row. Salts come from the name of the attribute they drive (:func:`_salt`), so adding an
attribute never shifts the values of the others.

The finished file is cached under a name keyed by scale, seed, :data:`GENERATOR_VERSION` and the
DuckDB version (whose ``hash`` the data depends on); :func:`ensure_database` builds it under a
file lock into a temporary name and renames it into place, so readers never see a half file.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import unicodedata
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from batchrunner.sigma_tables import sigma_tables

__all__ = [
    "DATA_END",
    "DATA_LOAD_TIME",
    "DATA_START",
    "EMULATED_NOW",
    "GENERATOR_VERSION",
    "POPULATED_TABLES",
    "database_path",
    "default_cache_dir",
    "ensure_database",
    "generate",
]

#: Bump whenever the generated data changes for a given (scale, seed).
GENERATOR_VERSION = 2

#: First instant of the synthetic history (inclusive).
DATA_START = datetime(2023, 1, 1, tzinfo=UTC)
#: End of the synthetic history (exclusive): three years after DATA_START.
DATA_END = datetime(2026, 1, 1, tzinfo=UTC)
#: Sigma's ``data_load_time``: the data is complete up to here (a midnight, as Sigma reports it).
DATA_LOAD_TIME = DATA_END
#: The emulated wall clock seen by queries (``now()``, ``current_date``): three hours after the
#: data load, Sigma's usual lag.
EMULATED_NOW = DATA_LOAD_TIME + timedelta(hours=3)

#: Tables that hold rows; every other published table exists empty.
POPULATED_TABLES = (
    "balance_transactions",
    "charges",
    "customers",
    "disputes",
    "exchange_rates_from_usd",
    "invoice_line_items",
    "invoices",
    "payment_intents",
    "prices",
    "products",
    "refunds",
    "subscription_item_change_events_v2_beta",
    "subscription_items",
    "subscriptions",
    "transfers",
)

_CACHE_ENV = "BATCHRUNNER_CACHE_DIR"


def _generation_memory() -> str:
    """DuckDB's memory limit while generating: half the RAM, at most 8 GiB.

    Enough for the intermediate tables of scale 100 without spilling much (measured: 5 GB
    costs ~20% more time than 11 GB); DuckDB's default would let it take 80% of the machine.
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    return f"{max(256, min(total // 2, 8 * 2**30) // 2**20)}MB"


_TRINO_TO_DUCKDB = {
    "varchar": "VARCHAR",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
    "double": "DOUBLE",
    "timestamp": "TIMESTAMP",
    "decimal(38,18)": "DECIMAL(38,18)",
}

# (code, share of customers, units per USD, minor-unit exponent, settles in itself?)
_CURRENCIES: tuple[tuple[str, float, float, int, bool], ...] = (
    ("usd", 0.58, 1.0, 2, True),
    ("eur", 0.14, 0.92, 2, True),
    ("gbp", 0.09, 0.79, 2, True),
    ("cad", 0.06, 1.36, 2, False),
    ("aud", 0.05, 1.52, 2, False),
    ("jpy", 0.05, 149.0, 0, False),
    ("chf", 0.03, 0.88, 2, False),
)
_COUNTRIES = {
    "usd": ("US",),
    "eur": ("DE", "FR", "ES", "IT", "NL", "IE", "AT"),
    "gbp": ("GB",),
    "cad": ("CA",),
    "aud": ("AU",),
    "jpy": ("JP",),
    "chf": ("CH",),
}
_CITIES = {
    "US": ("New York", "San José", "Austin", "Portland", "Coeur d'Alene"),
    "DE": ("München", "Köln", "Düsseldorf", "Berlin"),
    "FR": ("Paris", "Besançon", "Orléans", "Lyon"),
    "ES": ("Málaga", "A Coruña", "Madrid"),
    "IT": ("Milano", "Forlì", "Roma"),
    "NL": ("Amsterdam", "Den Haag", "Utrecht"),
    "IE": ("Dublin", "Dún Laoghaire", "Cork"),
    "AT": ("Wien", "Graz", "Linz"),
    "GB": ("London", "Manchester", "Edinburgh"),
    "CA": ("Montréal", "Québec", "Toronto"),
    "AU": ("Sydney", "Melbourne", "Brisbane"),
    "JP": ("Tōkyō", "Ōsaka", "Kyōto"),
    "CH": ("Zürich", "Genève", "Neuchâtel"),
}
_FIRST_NAMES = (
    "José", "Zoë", "Renée", "Björn", "Chloé", "Søren", "Ana", "François", "Jürgen", "Mei",
    "Liam", "Olivia", "Noah", "Emma", "Łukasz", "Siobhán", "Haruto", "Amélie", "Mateo", "Aisha",
)  # fmt: skip
_LAST_NAMES = (
    "Müller", "O'Brien", "García", "Nguyễn", "Dubois", "Østergaard", "Smith", "Johnson",
    "Kowalski", "Schäfer", "Tanaka", "Rossi", "Fernández", "Brown", "Lefèvre", "Çelik",
    "Andersson", "Wilson", "Khan", "Dvořák",
)  # fmt: skip
_STREETS = (
    "Main Street", "Rue de l'Église", "Bahnhofstraße", "Calle Mayor", "Via Roma",
    "Høgevej", "Market Street", "Rue du Faubourg Saint-Honoré", "Königsallee", "Elm Street",
)  # fmt: skip
_MERCHANTS = (
    "Café Zürich", "Bäckerei Müller", "Crêperie du Marché", "Smörgås Deli", "Ñandú Tacos",
    "Łódź Books", "Sushi 東京", "Straße 42 Bikes", "O'Malley's Pub", "Piña Colada Bar",
)  # fmt: skip
# (name, description, monthly price in US cents, yearly only?)
_PRODUCTS: tuple[tuple[str, str, int, bool], ...] = (
    ("Starter", "Essentials for getting started", 900, False),
    ("Café Pro", 'Everything a café needs, "all-in"', 2900, False),
    ("Zürich Analytics – Team", "Dashboards, exports and alerts", 7900, False),
    ('Deluxe "Gold" plan', "Priority support, 24/7", 14900, False),
    ("Crème Brûlée Box", "Monthly dessert box – ships frozen", 3500, False),
    ("Nordic Ski Pass – Åre", "Season access, all lifts", 19900, False),
    ("Growth, Annual", "Growth tier, billed yearly", 4900, True),
    ("Enterprise Suite", "SSO, audit logs, SLA", 49900, False),
)
_PRODUCT_WEIGHTS = (0.25, 0.2, 0.15, 0.1, 0.1, 0.05, 0.1, 0.05)
# Flattened lists (with each group's offset) for single list lookups in SQL.
_COUNTRY_LIST = [country for c in _CURRENCIES for country in _COUNTRIES[c[0]]]
_COUNTRY_OFFSET = {
    c[0]: sum(len(_COUNTRIES[d[0]]) for d in _CURRENCIES[:k]) for k, c in enumerate(_CURRENCIES)
}
_CITY_LIST = [city for country in _COUNTRY_LIST for city in _CITIES[country]]
_COUNTRY_OF_CITY = {city: country for country in _COUNTRY_LIST for city in _CITIES[country]}
_CITY_OFFSET = {
    country: sum(len(_CITIES[c]) for c in _COUNTRY_LIST[:k])
    for k, country in enumerate(_COUNTRY_LIST)
}

_SPAN_SECONDS = int((DATA_END - DATA_START).total_seconds())
_MASK40 = 1 << 40
# Index ranges that keep the ids of one prefix unique across the pieces that share it: invoice
# charges are numbered from _INVOICE_CHARGE, and each balance-transaction piece owns a _PIECE.
_INVOICE_CHARGE = 1 << 36
_PIECE = 1 << 37


def default_cache_dir() -> Path:
    """$BATCHRUNNER_CACHE_DIR, else ~/.cache/batchrunner/emulator."""
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "batchrunner" / "emulator"


def database_path(*, scale: float, seed: int, cache_dir: Path) -> Path:
    """Where the database for (scale, seed) lives in ``cache_dir``."""
    _check_args(scale, seed)
    scale_txt = repr(float(scale)).replace(".", "_")
    name = f"sigma-v{GENERATOR_VERSION}-duckdb{duckdb.__version__}-scale{scale_txt}-seed{seed}"
    return cache_dir / f"{name}.duckdb"


def ensure_database(*, scale: float, seed: int, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """Return the cached database for (scale, seed), generating it first if needed.

    Returns ``(path, generated)``. Safe across processes: generation happens under an exclusive
    lock on a sibling ``.lock`` file, into a temporary name that is renamed into place.
    """
    directory = default_cache_dir() if cache_dir is None else cache_dir
    path = database_path(scale=scale, seed=seed, cache_dir=directory)
    if path.exists():
        return path, False
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock")):
        if path.exists():  # another process finished it while we waited
            return path, False
        # Holding the lock, any temporary file of this key is a crashed generation's leftover.
        for stale in directory.glob(path.name + ".*.tmp*"):
            if stale.is_dir():  # DuckDB's spill directory
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            generate(tmp, scale=scale, seed=seed)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            Path(str(tmp) + ".wal").unlink(missing_ok=True)
    return path, True


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def generate(path: Path, *, scale: float, seed: int) -> None:
    """Write a complete database for (scale, seed) at ``path`` (which must not exist)."""
    _check_args(scale, seed)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"SET memory_limit = '{_generation_memory()}'")
        con.execute("BEGIN TRANSACTION")  # one commit instead of one per statement
        _Generator(con, scale=scale, seed=seed).run()
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _check_args(scale: float, seed: int) -> None:
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, not {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, not {seed!r}")  # noqa: TRY004 (a bad value)


# ---------------------------------------------------------------------------------------------
# SQL text helpers (pure)


def _salt(name: str) -> int:
    """A stable salt for one random attribute, derived from its name."""
    return zlib.crc32(name.encode("utf-8"))


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_lit(v) for v in values) + "]"


def _pick(values: Sequence[str], u: str) -> str:
    """SQL choosing one of ``values`` uniformly by the uniform [0, 1) expression ``u``."""
    return f"{_list(values)}[1 + floor(({u}) * {len(values)})::BIGINT]"


def _weighted(pairs: Sequence[tuple[str, float]], u: str) -> str:
    """SQL choosing a value by cumulative weights (the last one takes the rest)."""
    total = sum(w for _, w in pairs)
    parts, acc = [], 0.0
    for value, weight in pairs[:-1]:
        acc += weight / total
        parts.append(f"WHEN ({u}) < {acc:.6f} THEN {value}")
    return f"(CASE {' '.join(parts)} ELSE {pairs[-1][0]} END)"


def _case_map(key: str, mapping: dict[str, str], default: str = "NULL") -> str:
    whens = " ".join(f"WHEN {_lit(k)} THEN {v}" for k, v in mapping.items())
    return f"(CASE {key} {whens} ELSE {default} END)"


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S')}'"


def _data(name: str) -> str:
    """The stored table behind the published view ``name`` (not a published name itself)."""
    return f'"_data_{name}"'


def _create_table_sql(name: str, columns: dict[str, str]) -> str:
    cols = ", ".join(f'"{col}" {_TRINO_TO_DUCKDB[typ]}' for col, typ in columns.items())
    return f'CREATE TABLE "{name}" ({cols});'


# ---------------------------------------------------------------------------------------------


def _handle(name: str) -> str:
    """An e-mail-safe lower-case ASCII form of a name ('Łukasz' -> 'lukasz')."""
    folded = unicodedata.normalize("NFKD", name.translate(_FOLD)).encode("ascii", "ignore")
    return "".join(ch for ch in folded.decode("ascii").lower() if ch.isalpha())


_FOLD = str.maketrans({"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss"})


class _Generator:
    """Builds every table in one DuckDB connection; one method per table family.

    Attributes of customers, prices and ids are pure SQL functions of an index (methods named
    ``cus_*``, ``price_*`` and :meth:`mkid`), so tables use them without joins. Intermediate
    tables stay narrow (numbers, no ids) and are sorted once; the stored tables are then plain
    order-preserving projections of them, which keeps the output deterministic and the work
    linear in the scale.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, *, scale: float, seed: int) -> None:
        self.con = con
        self.seed = seed
        base = 100_000 * scale  # ≈ balance transactions at this scale
        self.n_customers = max(5, round(base * 0.10))
        self.n_subscriptions = max(2, round(base * 0.025))
        self.n_charges_target = max(10, round(base * 0.88))
        self.n_transfers = max(2, round(base * 0.06))
        self.n_accounts = 40
        # Daily payouts at full scale; small scales pay out less often (weekly, monthly) so
        # payouts stay a small share of the balance transactions.
        self.payout_days = min(30, max(1, round(1 / scale)))

    # -- plumbing ------------------------------------------------------------------------------

    def sql(self, text: str) -> None:
        self.con.execute(text)

    def count(self, table: str) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])

    def u(self, name: str, index: str) -> str:
        """A uniform [0, 1) value for attribute ``name`` of the row numbered ``index``."""
        return f"u({_salt(name)}, {index})"

    def mkid(self, prefix: str, name: str, index: str) -> str:
        """The Stripe-style id of object number ``index`` of a kind (unique per ``name``)."""
        return f"mkid({_lit(prefix)}, {_salt(name)}, {index})"

    def run(self) -> None:
        self.sql(
            "\n".join(
                _create_table_sql(n, dict(t.columns))
                for n, t in sigma_tables().items()
                if n not in POPULATED_TABLES
            )
        )
        self.macros()
        self.fx()
        self.customers()
        self.catalog()
        self.subscriptions()
        self.invoices()
        self.charges()
        self.transfers()
        self.balance_transactions()
        self.mrr_events()
        for name in POPULATED_TABLES:
            self.publish(name)

    def publish(self, name: str) -> None:
        """Expose the data table of ``name`` as a view with every published column.

        Only modelled columns are stored; the others are typed NULL constants of the view, which
        keeps the file small and generation fast (DuckDB pays per stored cell, NULL or not).
        """
        stored = {
            str(col)
            for (col,) in self.con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                [_data(name).strip('"')],
            ).fetchall()
        }
        published = dict(sigma_tables()[name].columns)
        unknown = stored - published.keys()
        if unknown:
            raise AssertionError(f"{name}: columns not in the published schema: {sorted(unknown)}")
        select = ", ".join(
            f'CAST("{col}" AS {_TRINO_TO_DUCKDB[typ]}) AS "{col}"'
            if col in stored
            else f'CAST(NULL AS {_TRINO_TO_DUCKDB[typ]}) AS "{col}"'
            for col, typ in published.items()
        )
        self.sql(f'CREATE VIEW "{name}" AS SELECT {select} FROM {_data(name)};')

    def macros(self) -> None:
        seed = self.seed
        span = _SPAN_SECONDS
        self.sql(f"""
        CREATE TEMP MACRO u(salt, i) AS
            ((hash((i)::BIGINT, (salt)::BIGINT, ({seed})::BIGINT) >> 11)::DOUBLE
             / 9007199254740992.0);
        -- growth over time: density rises linearly to 3x; q in [0, 1) is a time quantile
        CREATE TEMP MACRO tq(q) AS
            {_ts(DATA_START)} + to_seconds(floor((sqrt(1 + 8 * (q)) - 1) / 2 * {span})::BIGINT);
        CREATE TEMP MACRO lognormal(mu, sigma, u1, u2) AS
            exp((mu) + (sigma) * sqrt(-2 * ln(1 - (u1))) * cos(2 * pi() * (u2)));
        CREATE TEMP MACRO id_h(salt, n) AS
            hash((n)::BIGINT, (salt)::BIGINT, ({seed})::BIGINT, 7::BIGINT);
        -- for each salt a bijection of [0, 2^40) (affine map, then an xorshift): unique ids
        CREATE TEMP MACRO id_x(salt, n) AS
            (((n)::BIGINT * 5647565 + ((salt)::BIGINT * 40503 + {(seed * 2654435761) % _MASK40})
              % {_MASK40}) % {_MASK40});
        CREATE TEMP MACRO id_y(salt, n) AS xor(id_x(salt, n), (id_x(salt, n) << 13) % {_MASK40});
        -- prefix, 7 random base-36 characters, then 8 (lower case) that encode the bijection
        CREATE TEMP MACRO mkid(prefix, salt, n) AS concat(
            prefix, to_base((id_h(salt, n) % 78364164096)::BIGINT, 36, 7),
            lower(to_base(id_y(salt, n), 36, 8)));
        CREATE TEMP MACRO cur_idx(c) AS list_position({_list([c[0] for c in _CURRENCIES])}, c) - 1;
        CREATE TEMP MACRO cur_exp(c) AS CASE WHEN c = 'jpy' THEN 0 ELSE 2 END;
        CREATE TEMP MACRO day_of(ts) AS date_sub('day', {_ts(DATA_START)}, ts);
        """)

    def fx_rate(self, code: str, day: str) -> str:
        """Units of ``code`` per USD on day number ``day``: ±4% around a base, seed-phased."""
        base = next(c[2] for c in _CURRENCIES if c[0] == code)
        if code == "usd":
            return "1.0"
        phase = (_salt(f"fx.{code}") + self.seed) % 1000 / 1000
        return f"round({base} * (1 + 0.04 * sin(2 * pi() * (({day}) / 365.0 + {phase:.3f}))), 6)"

    def fx(self) -> None:
        """exchange_rates_from_usd: one row per day with a JSON object of rates."""
        args = ", ".join(f"{_lit(c[0])}, {self.fx_rate(c[0], 'd')}" for c in sorted(_CURRENCIES))
        self.sql(f"""
        CREATE TABLE {_data("exchange_rates_from_usd")} AS
        SELECT {_ts(DATA_START)} + to_days(d::INTEGER) AS date, 'usd' AS sell_currency,
               json_object({args})::VARCHAR AS buy_currency_exchange_rates
        FROM range({(DATA_END - DATA_START).days}) t(d);
        """)

    # -- customers: every attribute a function of the customer number -----------------------

    def cus_currency_idx(self, i: str) -> str:
        return _weighted(
            [(str(k), c[1]) for k, c in enumerate(_CURRENCIES)], self.u("cus.currency", i)
        )

    def cus_currency(self, i: str) -> str:
        return f"{_list([c[0] for c in _CURRENCIES])}[1 + {self.cus_currency_idx(i)}]"

    def country_of(self, city_idx: str) -> str:
        return f"{_list([_COUNTRY_OF_CITY[c] for c in _CITY_LIST])}[1 + ({city_idx})]"

    def city_of(self, city_idx: str) -> str:
        return f"{_list(_CITY_LIST)}[1 + ({city_idx})]"

    def cus_name(self, i: str) -> str:
        first = _pick(_FIRST_NAMES, self.u("cus.first", i))
        last = _pick(_LAST_NAMES, self.u("cus.last", i))
        return f"({first} || ' ' || {last})"

    def cus_email(self, i: str) -> str:
        first = _pick([_handle(n) for n in _FIRST_NAMES], self.u("cus.first", i))
        last = _pick([_handle(n) for n in _LAST_NAMES], self.u("cus.last", i))
        return f"({first} || '.' || {last} || (({i}) % 997)::VARCHAR || '@example.com')"

    def cus_street(self, i: str) -> str:
        number = f"(1 + floor({self.u('cus.no', i)} * 240)::BIGINT)::VARCHAR"
        return f"({number} || ' ' || {_pick(_STREETS, self.u('cus.street', i))})"

    def cus_brand(self, i: str) -> str:
        return _weighted(
            [("'visa'", 0.5), ("'mastercard'", 0.3), ("'amex'", 0.12), ("'discover'", 0.04),
             ("'jcb'", 0.02), ("'unionpay'", 0.02)],
            self.u("cus.brand", i),
        )  # fmt: skip

    def cus_funding(self, i: str) -> str:
        return _weighted(
            [("'credit'", 0.6), ("'debit'", 0.37), ("'prepaid'", 0.03)], self.u("cus.fund", i)
        )

    def cus_last4(self, i: str) -> str:
        return f"lpad((id_h({_salt('cus.last4')}, {i}) % 10000)::VARCHAR, 4, '0')"

    def cus_fingerprint(self, i: str) -> str:
        a, b = f"id_h({_salt('cus.fp')}, {i})", f"id_h({_salt('cus.fp2')}, {i})"
        return (
            f"concat(lower(to_base(({a} % 2821109907456)::BIGINT, 36, 8)), "
            f"to_base(({b} % 2821109907456)::BIGINT, 36, 8))"
        )

    def cus_exp_month(self, i: str) -> str:
        return f"(1 + floor({self.u('cus.expm', i)} * 12)::BIGINT)"

    def cus_exp_year(self, i: str) -> str:
        return f"(2025 + floor({self.u('cus.expy', i)} * 7)::BIGINT)"

    def customers(self) -> None:
        """The ``cust`` table (number -> city index, the one costly attribute) and customers."""
        n = self.n_customers
        country_off = f"[{', '.join(str(_COUNTRY_OFFSET[c[0]]) for c in _CURRENCIES)}]"
        country_len = f"[{', '.join(str(len(_COUNTRIES[c[0]])) for c in _CURRENCIES)}]"
        city_off = f"[{', '.join(str(_CITY_OFFSET[k]) for k in _COUNTRY_LIST)}]"
        city_len = f"[{', '.join(str(len(_CITIES[k])) for k in _COUNTRY_LIST)}]"
        # nested projections so each level's value is computed once per row
        self.sql(f"""
        CREATE TEMP TABLE cust AS
        SELECT i, {city_off}[1 + k] + floor({self.u("cus.city", "i")} * {city_len}[1 + k])::BIGINT
                   AS city_idx
        FROM (SELECT i, {country_off}[1 + c]
                        + floor({self.u("cus.country", "i")} * {country_len}[1 + c])::BIGINT AS k
              FROM (SELECT i, {self.cus_currency_idx("i")} AS c FROM range({n}) t(i)));
        """)
        desc = _weighted(
            [
                ("NULL", 0.85),
                ("'Wholesale account, \"net 30\" terms'", 0.05),
                ("'Café owner – prefers email'", 0.05),
                ("'Ships to: ' || street || E'\\n' || city", 0.01),
                ("'VIP'", 0.04),
            ],
            self.u("cus.desc", "i"),
        )
        self.sql(f"""
        CREATE TABLE {_data("customers")} AS
        SELECT {self.mkid("cus_", "cus.id", "i")} AS id,
               tq((i + {self.u("cus.t", "i")}) / {n}) AS created,
               {self.cus_currency("i")} AS currency, {self.cus_name("i")} AS name,
               {self.cus_email("i")} AS email, {desc} AS description,
               {self.country_of("city_idx")} AS address_country, city AS address_city,
               street AS address_line1,
               CASE WHEN {self.u("cus.line2", "i")} < 0.1 THEN 'Apt. ' ||
                   (1 + floor({self.u("cus.apt", "i")} * 40)::BIGINT)::VARCHAR END AS address_line2,
               lpad((hash(i::BIGINT, {_salt("cus.zip")}::BIGINT, {self.seed}::BIGINT)
                     % 100000)::VARCHAR, 5, '0') AS address_postal_code,
               CASE WHEN {self.u("cus.phone", "i")} < 0.6 THEN '+1 555 01' ||
                   lpad((i % 100)::VARCHAR, 2, '0') END AS phone,
               CASE WHEN {self.u("cus.bal", "i")} < 0.03 THEN -500 ELSE 0 END AS balance,
               CASE WHEN {self.u("cus.bal", "i")} < 0.03 THEN -500 ELSE 0 END AS account_balance,
               {self.u("cus.delinq", "i")} < 0.02 AS delinquent,
               {self.u("cus.deleted", "i")} < 0.01 AS deleted,
               CASE WHEN {self.u("cus.taxex", "i")} < 0.02 THEN 'exempt' ELSE 'none' END
                   AS tax_exempt,
               {self.mkid("pm_", "cus.pm", "i")} AS invoice_settings_default_payment_method_id,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM (SELECT i, city_idx, {self.city_of("city_idx")} AS city,
                     {self.cus_street("i")} AS street FROM cust);
        """)

    # -- products and prices: small, computed in Python ----------------------------------------

    def catalog(self) -> None:
        """8 products, each priced monthly and yearly in every currency (112 prices)."""
        self.price_amounts: list[str] = []
        self.price_nicknames: list[str] = []
        for name, _, usd_month, _ in _PRODUCTS:
            for interval in (0, 1):  # month, year
                for code, _, per_usd, exponent, _ in _CURRENCIES:
                    major = usd_month / 100 * (10 if interval else 1) * per_usd
                    if exponent == 0:
                        amount = max(100, round(major / 100) * 100)
                    else:  # a charm price: whole units minus one cent
                        amount = max(99, round(major) * 100 - 1)
                    label = "yearly" if interval else "monthly"
                    self.price_amounts.append(str(amount))
                    self.price_nicknames.append(f"{name} – {label} ({code.upper()})")
        rows = ", ".join(f"({p}, {_lit(name)}, {_lit(desc)})" for p, (name, desc, _, _) in
                         enumerate(_PRODUCTS))  # fmt: skip
        self.sql(f"""
        CREATE TABLE {_data("products")} AS
        SELECT {self.mkid("prod_", "prod.id", "p")} AS id, name, description,
               {_ts(DATA_START)} + to_hours(p::BIGINT) AS created, true AS active,
               'service' AS type, false AS shippable, {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM (VALUES {rows}) v(p, name, description) ORDER BY p;
        CREATE TABLE {_data("prices")} AS
        SELECT {self.price_id("idx")} AS id, {self.mkid("prod_", "prod.id", "idx // 14")}
                   AS product_id,
               {_list([c[0] for c in _CURRENCIES])}[1 + idx % 7] AS currency,
               {self.price_amount("idx")} AS unit_amount,
               {self.price_amount("idx")}::VARCHAR AS unit_amount_decimal,
               {self.price_nickname("idx")} AS nickname,
               CASE WHEN idx % 14 >= 7 THEN 'year' ELSE 'month' END AS recurring_interval,
               1 AS recurring_interval_count, 'licensed' AS recurring_usage_type,
               'recurring' AS type, true AS active, 'per_unit' AS billing_scheme,
               'unspecified' AS tax_behavior,
               {_ts(DATA_START)} + to_hours((idx // 14)::BIGINT) + INTERVAL 1 MINUTE AS created,
               CASE WHEN idx // 14 IN (1, 3) THEN 14 END AS recurring_trial_period_days,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM range({len(self.price_amounts)}) t(idx);
        """)

    def price_id(self, idx: str) -> str:
        return self.mkid("price_", "price.id", idx)

    def price_amount(self, idx: str) -> str:
        return f"[{', '.join(self.price_amounts)}][1 + ({idx})]"

    def price_nickname(self, idx: str) -> str:
        return f"{_list(self.price_nicknames)}[1 + ({idx})]"

    def product_name(self, p: str) -> str:
        return f"{_list([p[0] for p in _PRODUCTS])}[1 + ({p})]"

    # -- subscriptions and their invoices ---------------------------------------------------

    def subscriptions(self) -> None:
        n, nc = self.n_subscriptions, self.n_customers
        product = _weighted(
            [(str(p), w) for p, w in enumerate(_PRODUCT_WEIGHTS)], self.u("sub.product", "i")
        )
        self.sql(f"""
        CREATE TEMP TABLE sub AS
        SELECT *,
               CASE WHEN ended < {_ts(DATA_END)} THEN ended END AS ended_at,
               -- billing periods started before the subscription ended (or the data ends)
               CASE WHEN anchor >= least(ended, {_ts(DATA_END)}) THEN 0
                    ELSE date_sub('month', anchor,
                                  least(ended, {_ts(DATA_END)}) - INTERVAL 1 SECOND) // months + 1
               END AS n_periods
        FROM (
            SELECT *, p * 14 + iv * 7 + cur_idx(currency) AS price_idx,
                   CASE WHEN iv = 1 THEN 12 ELSE 1 END AS months,
                   CASE WHEN has_trial THEN created + INTERVAL 14 DAY END AS trial_end,
                   CASE WHEN has_trial THEN created + INTERVAL 14 DAY ELSE created END AS anchor,
                   -- months until cancellation: geometric, churn 3.5%/month or 25%/year
                   anchor + to_months((CASE WHEN iv = 1 THEN 12 ELSE 1 END * (1 + floor(
                       ln(1 - {self.u("sub.life", "i")})
                       / ln(CASE WHEN iv = 1 THEN 0.75 ELSE 0.965 END))))::INTEGER) AS ended
            FROM (
                SELECT i, tq(q) AS created, cust_idx, cust.city_idx AS cust_city,
                       {self.cus_currency("cust_idx")} AS currency,
                       p, CASE WHEN p = 6 OR {self.u("sub.yearly", "i")} < 0.2 THEN 1 ELSE 0 END
                           AS iv,
                       {self.u("sub.trial", "i")} < 0.25 AS has_trial,
                       CASE WHEN {self.u("sub.qty", "i")} < 0.8 THEN 1
                            ELSE 2 + floor({self.u("sub.qty2", "i")} * 4)::BIGINT END AS quantity
                FROM (SELECT i, q,
                             greatest(0, floor({self.u("sub.cust", "i")} * (q * {nc} - 1)))::BIGINT
                                 AS cust_idx,
                             {product} AS p
                      FROM (SELECT i, (i + {self.u("sub.t", "i")}) / {n} AS q
                            FROM range({n}) t(i)))
                JOIN (SELECT i AS cust_idx, city_idx FROM cust) cust USING (cust_idx)))
        ORDER BY i;
        """)

    def invoices(self) -> None:
        """One invoice per billing period (plus a $0 one when a trial starts), sorted by date."""
        self.sql(f"""
        CREATE TEMP TABLE inv AS
        SELECT *,
               period_start + to_seconds((1800 + floor({self.u("inv.delay", "inv_key")}
                   * 3600))::BIGINT) AS charge_at,
               {self.u("inv.fail", "inv_key")} < 0.06 AS failed
        FROM (
            SELECT i, k, i * 4096 + k AS inv_key, cust_idx, cust_city, currency, quantity,
                   price_idx, p,
                   months, has_trial,
                   CASE WHEN has_trial AND k = 0 THEN created
                        WHEN has_trial THEN anchor + to_months(((k - 1) * months)::INTEGER)
                        ELSE anchor + to_months((k * months)::INTEGER) END AS period_start,
                   CASE WHEN has_trial AND k = 0 THEN trial_end
                        WHEN has_trial THEN anchor + to_months((k * months)::INTEGER)
                        ELSE anchor + to_months(((k + 1) * months)::INTEGER) END AS period_end,
                   CASE WHEN has_trial AND k = 0 THEN 0
                        ELSE {self.price_amount("price_idx")} * quantity END AS total,
                   ended_at
            FROM (SELECT *, unnest(range(n_periods + CASE WHEN has_trial THEN 1 ELSE 0 END)) AS k
                  FROM sub))
        WHERE period_start < {_ts(DATA_END)} AND (ended_at IS NULL OR period_start < ended_at)
        ORDER BY period_start, inv_key;
        CREATE TEMP TABLE inv_x AS
        SELECT *, total > 0 AND charge_at < {_ts(DATA_END)} AS charged,
               CASE WHEN total = 0 OR (total > 0 AND charge_at < {_ts(DATA_END)} AND NOT failed)
                        THEN 'paid'
                    WHEN charge_at >= {_ts(DATA_END)}
                         OR period_start >= {_ts(DATA_END)} - INTERVAL 30 DAY THEN 'open'
                    WHEN {self.u("inv.void", "inv_key")} < 0.5 THEN 'uncollectible'
                    ELSE 'void' END AS status
        FROM inv;
        DROP TABLE inv;
        """)
        inv_id = self.mkid("in_", "inv.id", "inv_key")
        sub_id = self.mkid("sub_", "sub.id", "i")
        charge_id = self.mkid("ch_", "ch.id", f"{_INVOICE_CHARGE} + inv_key")
        self.sql(f"""
        CREATE TABLE {_data("invoices")} AS
        SELECT {inv_id} AS id, {self.mkid("cus_", "cus.id", "cust_idx")} AS customer_id,
               {sub_id} AS subscription_id,
               CASE WHEN charged THEN {charge_id} END AS charge_id, currency,
               period_start AS date, period_start, period_end,
               total AS amount_due, CASE WHEN status = 'paid' THEN total ELSE 0 END AS amount_paid,
               CASE WHEN status = 'paid' THEN 0 ELSE total END AS amount_remaining,
               total AS subtotal, total, 0 AS starting_balance, 0 AS ending_balance,
               status, status = 'paid' AS paid, false AS paid_out_of_band,
               charged AS attempted,
               CASE WHEN NOT charged THEN 0 WHEN NOT failed THEN 1
                    ELSE 1 + floor({self.u("inv.attempts", "inv_key")} * 3)::BIGINT END
                   AS attempt_count,
               status = 'open' AS auto_advance,
               CASE WHEN k = 0 THEN 'subscription_create' ELSE 'subscription_cycle' END
                   AS billing_reason,
               'charge_automatically' AS collection_method,
               right({sub_id}, 8) || '-' || lpad((k + 1)::VARCHAR, 4, '0') AS number,
               {self.cus_email("cust_idx")} AS customer_email,
               {self.cus_name("cust_idx")} AS customer_name,
               {self.country_of("cust_city")} AS customer_address_country,
               'none' AS customer_tax_exempt, false AS automatic_tax_enabled,
               period_start + INTERVAL 1 HOUR AS status_transitions_finalized_at,
               period_start + INTERVAL 1 HOUR AS effective_at,
               CASE WHEN status = 'paid' THEN CASE WHEN charged THEN charge_at
                   ELSE period_start + INTERVAL 1 HOUR END END AS status_transitions_paid_at,
               CASE WHEN status = 'void' THEN period_start + INTERVAL 20 DAY END
                   AS status_transitions_voided_at,
               CASE WHEN status = 'uncollectible' THEN period_start + INTERVAL 20 DAY END
                   AS status_transitions_marked_uncollectible_at,
               CASE WHEN status = 'open' THEN period_start + INTERVAL 3 DAY END
                   AS next_payment_attempt,
               period_start + INTERVAL 1 MINUTE AS webhooks_delivered_at,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM inv_x;
        CREATE TABLE {_data("invoice_line_items")} AS
        SELECT {self.mkid("il_", "il.id", "inv_key")} AS id, {inv_id} AS invoice_id,
               total AS amount, currency,
               CASE WHEN total = 0 THEN 'Trial period for ' || {self.product_name("p")}
                    ELSE quantity::VARCHAR || ' × ' || {self.product_name("p")} || ' ('
                         || {self.price_nickname("price_idx")} || ')' END AS description,
               true AS discountable, period_start, period_end,
               {self.price_id("price_idx")} AS plan_id, {self.price_id("price_idx")} AS price_id,
               false AS proration, quantity, {sub_id} AS subscription,
               {self.mkid("si_", "si.id", "i")} AS subscription_item_id,
               'subscription' AS source_type, {sub_id} AS source_id,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM inv_x;
        """)
        self.insert_subscription_tables()

    def insert_subscription_tables(self) -> None:
        feedback = _weighted(
            [("'too_expensive'", 0.3), ("'missing_features'", 0.2), ("'switched_service'", 0.2),
             ("'unused'", 0.2), ("'other'", 0.1)],
            self.u("sub.feedback", "s.i"),
        )  # fmt: skip
        self.sql(f"""
        CREATE TEMP TABLE sub_last AS
        SELECT i, max(k) AS last_k, arg_max(period_start, k) AS cur_start,
               arg_max(period_end, k) AS cur_end, arg_max(inv_key, k) AS last_inv_key,
               arg_max(status, k) AS last_status
        FROM inv_x GROUP BY i;
        CREATE TABLE {_data("subscriptions")} AS
        SELECT {self.mkid("sub_", "sub.id", "s.i")} AS id,
               {self.mkid("cus_", "cus.id", "s.cust_idx")} AS customer_id,
               s.created, s.created AS start, s.created AS start_date,
               {self.price_id("s.price_idx")} AS price_id,
               {self.price_id("s.price_idx")} AS plan_id, s.quantity,
               CASE WHEN s.ended_at IS NOT NULL THEN 'canceled'
                    WHEN s.trial_end > {_ts(DATA_END)} THEN 'trialing'
                    WHEN l.last_status IN ('open', 'uncollectible', 'void') THEN 'past_due'
                    ELSE 'active' END AS status,
               s.anchor AS billing_cycle_anchor, 'charge_automatically' AS billing,
               l.cur_start AS current_period_start, l.cur_end AS current_period_end,
               {self.mkid("in_", "inv.id", "l.last_inv_key")} AS latest_invoice_id,
               CASE WHEN s.has_trial THEN s.created END AS trial_start, s.trial_end,
               s.ended_at, CASE WHEN s.ended_at IS NOT NULL THEN
                   greatest(s.created, s.ended_at - to_seconds(floor({self.u("sub.cancel", "s.i")}
                       * 20 * 86400)::BIGINT)) END AS canceled_at,
               false AS cancel_at_period_end,
               CASE WHEN s.ended_at IS NOT NULL THEN 'cancellation_requested' END
                   AS cancellation_details_reason,
               CASE WHEN s.ended_at IS NOT NULL THEN {feedback} END
                   AS cancellation_details_feedback,
               CASE WHEN s.ended_at IS NOT NULL AND {self.u("sub.comment", "s.i")} < 0.2
                    THEN 'Too pricey for us, sorry – "we''ll be back"' END
                   AS cancellation_details_comment,
               false AS automatic_tax_enabled, 'classic' AS billing_mode_type,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM sub s LEFT JOIN sub_last l USING (i) ORDER BY s.i;
        CREATE TABLE {_data("subscription_items")} AS
        SELECT {self.mkid("si_", "si.id", "i")} AS id,
               {self.mkid("sub_", "sub.id", "i")} AS subscription_id,
               {self.mkid("sub_", "sub.id", "i")} AS subscription,
               epoch(created)::BIGINT AS created, quantity,
               {self.price_id("price_idx")} AS price_id,
               {self.price_nickname("price_idx")} AS price_nickname,
               {self.mkid("prod_", "prod.id", "p")} AS price_product_id,
               currency AS price_currency, {self.price_amount("price_idx")} AS price_unit_amount,
               CASE WHEN iv = 1 THEN 'year' ELSE 'month' END AS price_recurring_interval,
               1 AS price_recurring_interval_count,
               {_ts(DATA_START)} + to_hours(p::BIGINT) + INTERVAL 1 MINUTE AS price_created,
               {self.price_id("price_idx")} AS plan_id,
               {self.price_nickname("price_idx")} AS plan_nickname,
               {self.mkid("prod_", "prod.id", "p")} AS plan_product_id, currency AS plan_currency,
               {self.price_amount("price_idx")} AS plan_amount,
               CASE WHEN iv = 1 THEN 'year' ELSE 'month' END AS plan_interval,
               1 AS plan_interval_count,
               {_ts(DATA_START)} + to_hours(p::BIGINT) + INTERVAL 1 MINUTE AS plan_created,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM sub;
        """)

    # -- charges ------------------------------------------------------------------------------

    def charges(self) -> None:
        n_invoice_charges = self.count("inv_x WHERE charged")
        n = max(self.n_charges_target - n_invoice_charges, 5)
        nc = self.n_customers
        merchant = _pick(_MERCHANTS, self.u("ch.merchant", "i"))
        product = _pick([p[0] for p in _PRODUCTS], self.u("ch.product", "i"))
        order_no = f"(1000 + floor({self.u('ch.order', 'i')} * 90000)::BIGINT)::VARCHAR"
        desc = _weighted(
            [
                (f"'Order ' || {order_no} || ', \"' || {product} || '\" plan – ' || {merchant}",
                 0.35),
                (f"'Commande n° ' || {order_no} || ' – ' || {merchant}", 0.15),
                (f"'Gift card, ' || {merchant}", 0.1),
                (f"'Ticket: \"Live at ' || {merchant} || '\", row ' || {order_no}", 0.1),
                ("NULL", 0.3),
            ],
            self.u("ch.desc", "i"),
        )  # fmt: skip
        guest_cur = _weighted([(_lit(c[0]), c[1]) for c in _CURRENCIES], self.u("ch.gcur", "i"))
        amount_major = (
            f"least(5000, greatest(0.5, lognormal(3.6, 1.0, {self.u('ch.amt1', 'i')}, "
            f"{self.u('ch.amt2', 'i')})))"
        )
        per_usd = _case_map("currency", {c[0]: str(c[2]) for c in _CURRENCIES}, "1.0")
        fx_rate = _case_map(
            "currency", {c[0]: self.fx_rate(c[0], "day_of(created)") for c in _CURRENCIES}, "1.0"
        )
        fail_code = _weighted(
            [("'card_declined'", 0.55), ("'insufficient_funds'", 0.2), ("'expired_card'", 0.1),
             ("'incorrect_cvc'", 0.1), ("'processing_error'", 0.05)],
            self.u("ch.fcode", "cidx"),
        )  # fmt: skip
        self.sql(f"""
        CREATE TEMP TABLE charge_a AS
        SELECT i AS cidx, created, cust_idx, cust.city_idx AS cust_city,
               CASE WHEN cust_idx IS NULL THEN guest_currency
                    ELSE {self.cus_currency("cust_idx")} END AS currency,
               NULL::BIGINT AS inv_key, description, {self.u("ch.fail", "i")} < 0.08 AS failed,
               amount_major
        FROM (SELECT i, tq(q) AS created,
                     CASE WHEN {self.u("ch.guest", "i")} < 0.1 THEN NULL
                          ELSE greatest(0, floor({self.u("ch.cust", "i")} * (q * {nc} - 1)))::BIGINT
                     END AS cust_idx,
                     {amount_major} AS amount_major, {desc} AS description,
                     {guest_cur} AS guest_currency
              FROM (SELECT i, (i + {self.u("ch.t", "i")}) / {n} AS q FROM range({n}) t(i)))
        LEFT JOIN (SELECT i AS cust_idx, city_idx FROM cust) cust USING (cust_idx);
        CREATE TEMP TABLE charge_b AS
        SELECT cidx, created, cust_idx, cust_city, currency, inv_key, description, failed,
               CASE WHEN cur_exp(currency) = 0
                    THEN greatest(50, round(amount_major * {per_usd}))::BIGINT
                    ELSE greatest(50, round(amount_major * {per_usd} * 100))::BIGINT END AS amount
        FROM charge_a
        UNION ALL
        SELECT {_INVOICE_CHARGE} + inv_key, charge_at, cust_idx, cust_city, currency, inv_key,
               CASE WHEN k <= (CASE WHEN has_trial THEN 1 ELSE 0 END)
                    THEN 'Subscription creation' ELSE 'Subscription update' END,
               failed, total
        FROM inv_x WHERE charged;
        DROP TABLE charge_a;
        CREATE TEMP TABLE charge_c AS
        SELECT *, NOT failed AS succeeded,
               currency IN ({", ".join(_lit(c[0]) for c in _CURRENCIES if c[4])}) AS settles_same,
               round(1.0 / {fx_rate} * (1 + ({self.u("ch.fxn", "cidx")} - 0.5) * 0.01), 6)
                   AS rate_to_usd,
               created + to_seconds((3600 + floor({self.u("ch.rdelay", "cidx")}
                   * 30 * 86400))::BIGINT) AS refund_at,
               created + to_seconds((10 * 86400 + floor({self.u("ch.ddelay", "cidx")}
                   * 50 * 86400))::BIGINT) AS dispute_at,
               {self.u("ch.rfull", "cidx")} < 0.7 AS full_refund
        FROM charge_b;
        DROP TABLE charge_b;
        -- narrow (no ids, no customer attributes) and sorted once: the tables built from it are
        -- plain order-preserving projections
        CREATE TEMP TABLE charge AS
        SELECT cidx, created, cust_idx, cust_city, currency, inv_key, description, failed,
               succeeded, amount,
               settle_currency, exchange_rate, bt_amount, full_refund, refund_at, dispute_at,
               has_refund, has_dispute,
               CASE WHEN succeeded THEN round(bt_amount * 0.029)::BIGINT
                   + CASE settle_currency WHEN 'eur' THEN 25 WHEN 'gbp' THEN 20 ELSE 30 END
                   + CASE WHEN settles_same THEN 0 ELSE round(bt_amount * 0.01)::BIGINT END
               END AS fee,
               CASE WHEN has_refund THEN
                   CASE WHEN full_refund THEN amount
                        ELSE greatest(1, floor(amount * (0.2 + 0.7
                             * {self.u("ch.rpart", "cidx")})))::BIGINT END
               ELSE 0 END AS amount_refunded,
               CASE WHEN failed THEN {fail_code} END AS failure_code
        FROM (
            SELECT *,
                   CASE WHEN settles_same THEN currency ELSE 'usd' END AS settle_currency,
                   CASE WHEN settles_same THEN NULL ELSE rate_to_usd END AS exchange_rate,
                   CASE WHEN settles_same THEN amount
                        ELSE round(amount / CASE WHEN cur_exp(currency) = 0 THEN 1 ELSE 100 END
                                   * rate_to_usd * 100)::BIGINT END AS bt_amount,
                   succeeded AND {self.u("ch.refund", "cidx")} < 0.07
                       AND refund_at < {_ts(DATA_END)} AS has_refund,
                   succeeded AND NOT ({self.u("ch.refund", "cidx")} < 0.07
                                      AND refund_at < {_ts(DATA_END)})
                       AND {self.u("ch.dispute", "cidx")} < 0.006
                       AND dispute_at < {_ts(DATA_END)} AS has_dispute
            FROM charge_c)
        ORDER BY created, cidx;
        DROP TABLE charge_c;
        """)
        self.insert_charges()
        self.insert_payment_intents()
        self.insert_refunds_and_disputes()

    def charge_ids(self) -> dict[str, str]:
        """Ids derived from a ``charge`` row (lazy CASEs compute only the ones that exist)."""
        return {
            "id": self.mkid("ch_", "ch.id", "cidx"),
            "pi": self.mkid("pi_", "pi.id", "cidx"),
            "bt": f"CASE WHEN succeeded THEN {self.mkid('txn_', 'txn.id', 'cidx')} END",
            "invoice": f"CASE WHEN inv_key IS NOT NULL"
            f" THEN {self.mkid('in_', 'inv.id', 'inv_key')} END",
            "customer": f"CASE WHEN cust_idx IS NOT NULL"
            f" THEN {self.mkid('cus_', 'cus.id', 'cust_idx')} END",
            "dispute": f"CASE WHEN has_dispute THEN {self.mkid('du_', 'du.id', 'cidx')} END",
            "pm": f"CASE WHEN cust_idx IS NULL THEN {self.mkid('pm_', 'ch.pm', 'cidx')}"
            f" ELSE {self.mkid('pm_', 'cus.pm', 'cust_idx')} END",
        }

    def insert_charges(self) -> None:
        ids = self.charge_ids()
        fail_message = _case_map(
            "failure_code",
            {
                "card_declined": "'Your card was declined.'",
                "insufficient_funds": "'Your card has insufficient funds.'",
                "expired_card": "'Your card has expired.'",
                "incorrect_cvc": "'Your card''s security code is incorrect.'",
                "processing_error": "'An error occurred while processing your card. Try again.'",
            },
        )
        blocked = f"{self.u('ch.blocked', 'cidx')} < 0.1"
        guest = "cust_idx IS NULL"

        def cus(attr: str) -> str:  # a customer attribute, NULL for guests
            return (
                f"CASE WHEN {guest} THEN NULL ELSE {getattr(self, 'cus_' + attr)('cust_idx')} END"
            )

        self.sql(f"""
        CREATE TABLE {_data("charges")} AS
        SELECT {ids["id"]} AS id, created, amount, currency, description,
               {ids["customer"]} AS customer_id, {ids["invoice"]} AS invoice_id,
               {ids["pi"]} AS payment_intent,
               CASE WHEN succeeded THEN 'succeeded' ELSE 'failed' END AS status,
               succeeded AS paid, succeeded AS captured,
               CASE WHEN succeeded THEN created END AS captured_at,
               amount_refunded, has_refund AND full_refund AS refunded,
               {ids["dispute"]} AS dispute_id, {ids["bt"]} AS balance_transaction_id,
               failure_code, {fail_message} AS failure_message,
               CASE WHEN succeeded THEN 'authorized'
                    WHEN {blocked} THEN 'blocked' ELSE 'issuer_declined' END AS outcome_type,
               CASE WHEN succeeded THEN 'approved_by_network'
                    WHEN {blocked} THEN 'not_sent_to_network'
                    ELSE 'declined_by_network' END AS outcome_network_status,
               CASE WHEN failed AND {blocked} THEN 'highest_risk_level'
                    WHEN failed THEN 'generic_decline' END AS outcome_reason,
               CASE WHEN failed AND {blocked} THEN 'highest'
                    WHEN {self.u("ch.risk", "cidx")} < 0.08 THEN 'elevated'
                    ELSE 'normal' END AS outcome_risk_level,
               floor({self.u("ch.score", "cidx")} * 60)::BIGINT
                   + CASE WHEN failed AND {blocked} THEN 40 ELSE 0 END AS outcome_risk_score,
               CASE WHEN succeeded THEN 'Payment complete.'
                    WHEN {blocked} THEN 'Stripe blocked this payment as too risky.'
                    ELSE 'The bank did not return any further details with this decline.'
               END AS outcome_seller_message,
               'card' AS payment_method_type, {ids["pm"]} AS payment_method_id,
               CASE WHEN {guest} THEN {self.mkid("card_", "ch.card", "cidx")}
                    ELSE {self.mkid("card_", "cus.card", "cust_idx")} END AS card_id,
               CASE WHEN {guest} THEN 'visa' ELSE {self.cus_brand("cust_idx")} END AS card_brand,
               CASE WHEN {guest} THEN 'credit' ELSE {self.cus_funding("cust_idx")} END
                   AS card_funding,
               CASE WHEN {guest} THEN 'US' ELSE {self.country_of("cust_city")} END
                   AS card_country,
               CASE WHEN {guest} THEN lpad((cidx % 10000)::VARCHAR, 4, '0')
                    ELSE {self.cus_last4("cust_idx")} END AS card_last4,
               CASE WHEN {guest} THEN 12 ELSE {self.cus_exp_month("cust_idx")} END
                   AS card_exp_month,
               CASE WHEN {guest} THEN 2030 ELSE {self.cus_exp_year("cust_idx")} END
                   AS card_exp_year,
               CASE WHEN {guest} THEN {self.cus_fingerprint(f"{_PIECE} + cidx")}
                    ELSE {self.cus_fingerprint("cust_idx")} END AS card_fingerprint,
               {cus("name")} AS card_name,
               CASE WHEN {guest} THEN NULL ELSE 'pass' END AS card_cvc_check,
               CASE WHEN {guest} THEN NULL ELSE 'pass' END AS card_address_zip_check,
               {self.country_of("cust_city")} AS card_address_country,
               {self.city_of("cust_city")} AS card_address_city,
               {cus("street")} AS card_address_line1,
               CASE WHEN succeeded THEN {cus("email")} END AS receipt_email,
               CASE WHEN succeeded AND NOT {guest}
                    THEN '1' || lpad((cidx % 10000000)::VARCHAR, 7, '0') || '-'
                         || lpad(((cidx // 7) % 10000)::VARCHAR, 4, '0') END AS receipt_number,
               'BATCHRUNNER* DEMO' AS calculated_statement_descriptor,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM charge;
        """)

    def insert_payment_intents(self) -> None:
        ids = self.charge_ids()
        self.sql(f"""
        CREATE TABLE {_data("payment_intents")} AS
        SELECT {ids["pi"]} AS id,
               greatest({_ts(DATA_START)}, created - INTERVAL 2 SECOND) AS created,
               amount, currency, {ids["customer"]} AS customer_id,
               {ids["invoice"]} AS invoice_id, description,
               CASE WHEN succeeded THEN 'succeeded' ELSE 'requires_payment_method' END AS status,
               0 AS amount_capturable, 'automatic' AS capture_method,
               'automatic' AS confirmation_method, 'card' AS payment_method_types,
               CASE WHEN succeeded THEN {ids["pm"]} END AS payment_method_id,
               CASE WHEN failed THEN 'card_error' END AS last_payment_error_type,
               CASE WHEN failed THEN {ids["id"]} END AS last_payment_error_charge,
               CASE WHEN inv_key IS NOT NULL THEN 'off_session' END AS setup_future_usage,
               CASE WHEN cust_idx IS NOT NULL THEN {self.cus_email("cust_idx")} END
                   AS receipt_email,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM charge;
        """)

    def insert_refunds_and_disputes(self) -> None:
        ids = self.charge_ids()
        reason = _weighted(
            [("'requested_by_customer'", 0.6), ("'duplicate'", 0.1), ("'fraudulent'", 0.05),
             ("NULL", 0.25)],
            self.u("re.reason", "cidx"),
        )  # fmt: skip
        d_reason = _weighted(
            [("'fraudulent'", 0.45), ("'product_not_received'", 0.2), ("'duplicate'", 0.08),
             ("'subscription_canceled'", 0.1), ("'product_unacceptable'", 0.07),
             ("'credit_not_processed'", 0.05), ("'general'", 0.05)],
            self.u("du.reason", "cidx"),
        )  # fmt: skip
        network_code = _case_map(
            "reason",
            {
                "fraudulent": "'10.4'",
                "product_not_received": "'13.1'",
                "duplicate": "'12.6.1'",
                "subscription_canceled": "'13.2'",
                "product_unacceptable": "'13.3'",
                "credit_not_processed": "'13.6'",
            },
            "'13.7'",
        )
        self.sql(f"""
        CREATE TABLE {_data("refunds")} AS
        SELECT {self.mkid("re_", "re.id", "cidx")} AS id, {ids["id"]} AS charge_id,
               refund_at AS created, amount_refunded AS amount, currency,
               {self.mkid("txn_", "txn.id", f"{_PIECE * 2} + cidx")} AS balance_transaction_id,
               {reason} AS reason, 'succeeded' AS status, {ids["pi"]} AS refund_payment_intent,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM charge WHERE has_refund ORDER BY refund_at, cidx;
        CREATE TEMP TABLE dispute AS
        SELECT *,
               CASE WHEN closed_at >= {_ts(DATA_END)} THEN
                        CASE WHEN created >= {_ts(DATA_END)} - INTERVAL 7 DAY THEN 'needs_response'
                             ELSE 'under_review' END
                    WHEN outcome < 0.35 THEN 'won' WHEN outcome < 0.9 THEN 'lost'
                    ELSE 'warning_closed' END AS status
        FROM (
            SELECT cidx, dispute_at AS created, amount, currency, bt_amount, settle_currency,
                   exchange_rate, {d_reason} AS reason, {self.u("du.outcome", "cidx")} AS outcome,
                   dispute_at + to_seconds((30 * 86400 + floor({self.u("du.rdelay", "cidx")}
                       * 45 * 86400))::BIGINT) AS closed_at
            FROM charge WHERE has_dispute);
        CREATE TABLE {_data("disputes")} AS
        SELECT {self.mkid("du_", "du.id", "cidx")} AS id, {ids["id"]} AS charge_id,
               created, amount, currency, reason, status,
               {network_code} AS network_reason_code, 'visa' AS network_details_type,
               false AS is_charge_refundable,
               created + INTERVAL 7 DAY AS evidence_details_due_by,
               status IN ('won', 'lost', 'under_review') AS evidence_details_has_evidence,
               status NOT IN ('won', 'lost', 'under_review', 'needs_response')
                   AS evidence_details_past_due,
               CASE WHEN status IN ('won', 'lost', 'under_review') THEN 1 ELSE 0 END
                   AS evidence_details_submission_count,
               CASE WHEN status IN ('won', 'lost', 'under_review')
                    THEN 'Customer received the order, see tracking – "delivered", signed.'
               END AS evidence_uncategorized_text,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM dispute ORDER BY created, cidx;
        """)

    # -- transfers and the balance ------------------------------------------------------------

    def transfers(self) -> None:
        n = self.n_transfers
        group = (
            f"CASE WHEN {self.u('tr.group', 'i')} < 0.4 THEN 'ORDER_' || (10000 + i)::VARCHAR END"
        )
        destination = self.mkid(
            "acct_", "acct.id", f"floor({self.u('tr.dest', 'i')} * {self.n_accounts})::BIGINT"
        )
        self.sql(f"""
        CREATE TEMP TABLE xfer AS
        SELECT i, tq((i + {self.u("tr.t", "i")}) / {n}) AS created,
               greatest(100, round(lognormal(9.2, 1.0, {self.u("tr.a1", "i")},
                                             {self.u("tr.a2", "i")})))::BIGINT AS amount,
               {group} AS transfer_group
        FROM range({n}) t(i);
        CREATE TABLE {_data("transfers")} AS
        SELECT {self.mkid("tr_", "tr.id", "i")} AS id, created, created AS date, amount,
               'usd' AS currency, 0 AS amount_reversed, false AS reversed, false AS automatic,
               {self.mkid("txn_", "txn.id", f"{_PIECE * 3} + i")} AS balance_transaction_id,
               {destination} AS destination_id, transfer_group, 'paid' AS status,
               'stripe_account' AS type, 'card' AS source_type,
               CASE WHEN transfer_group IS NOT NULL THEN 'Payout share – ' || transfer_group END
                   AS description,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM xfer;
        """)

    def balance_transactions(self) -> None:
        """Charges, refunds, disputes, transfers and Stripe fees, then the payouts of them.

        Pieces are numbered (1 charge, 2 refund, 3 transfer, 4 dispute, 5 dispute reversal,
        6 Stripe fee, 7 payout); a transaction's id and source id are functions of its piece
        and index, computed after the one sort.
        """
        fee_rows = []
        for m in range(36):
            start = datetime(DATA_START.year + m // 12, m % 12 + 1, 1)
            end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            period = f"({start:%Y-%m-%d} - {end:%Y-%m-%d})"
            day = _lit(end.strftime("%Y-%m-%d"))
            fee_rows.append(f"({m * 2}, {day}, {_lit(f'Billing - Usage Fee {period}')})")
            fee_rows.append(
                f"({m * 2 + 1}, {day}, {_lit(f'Radar {period}: Radar for Fraud Teams')})"
            )
        self.sql(f"""
        CREATE TEMP TABLE bt0 AS
        SELECT 1 AS piece, cidx AS idx, created, bt_amount AS amount, fee,
               settle_currency AS currency, exchange_rate, description
        FROM charge WHERE succeeded
        UNION ALL
        SELECT 2, cidx, refund_at,
               -CASE WHEN full_refund THEN bt_amount
                     ELSE round(amount_refunded * bt_amount / amount)::BIGINT END,
               0, settle_currency, exchange_rate,
               'REFUND FOR CHARGE (' || coalesce(description, 'no description') || ')'
        FROM charge WHERE has_refund
        UNION ALL
        SELECT 3, i, created, -amount, 0, 'usd', NULL, NULL FROM xfer
        UNION ALL
        SELECT 4, cidx, created, -bt_amount,
               CASE settle_currency WHEN 'eur' THEN 2000 WHEN 'gbp' THEN 2000 ELSE 1500 END,
               settle_currency, exchange_rate, NULL
        FROM dispute
        UNION ALL
        SELECT 5, cidx, closed_at, bt_amount, 0, settle_currency, exchange_rate, NULL
        FROM dispute WHERE status = 'won'
        UNION ALL
        SELECT 6, f, CAST(d AS TIMESTAMP) + INTERVAL 23 HOUR + INTERVAL 30 MINUTE,
               -(500 + floor({self.u("fee.amt", "f")} * 20000)::BIGINT), 0, 'usd', NULL,
               description
        FROM (VALUES {", ".join(fee_rows)}) v(f, d, description);
        -- available two days after a charge, the next day otherwise; paid out by the first
        -- payout day on or after that
        CREATE TEMP TABLE bt1 AS
        SELECT *, amount - fee AS net,
               {_ts(DATA_START)} + to_days((ceil(day_of(available_on) / {self.payout_days})
                   * {self.payout_days})::INTEGER) AS payout_day
        FROM (SELECT *, date_trunc('day', created)
                  + CASE WHEN piece = 1 THEN INTERVAL 2 DAY ELSE INTERVAL 1 DAY END AS available_on
              FROM bt0);
        DROP TABLE bt0;
        CREATE TEMP TABLE payout AS
        SELECT currency, payout_day, -sum(net)::BIGINT AS amount,
               day_of(payout_day) * 8 + cur_idx(currency) AS payout_key
        FROM bt1 WHERE payout_day + INTERVAL 6 HOUR < {_ts(DATA_END)}
        GROUP BY currency, payout_day;
        CREATE TEMP TABLE bt AS
        SELECT * FROM (
            SELECT b.piece, b.idx, b.created, b.amount, b.fee, b.net, b.currency,
                   b.exchange_rate, b.description, b.available_on, p.payout_key
            FROM bt1 b LEFT JOIN payout p USING (currency, payout_day)
            UNION ALL
            SELECT 7, payout_key, payout_day + INTERVAL 6 HOUR, amount, 0, amount, currency,
                   NULL, 'STRIPE PAYOUT', payout_day + INTERVAL 6 HOUR, payout_key
            FROM payout)
        ORDER BY created, piece, idx;
        DROP TABLE bt1;
        """)
        types = {1: "charge", 2: "refund", 3: "transfer", 4: "adjustment", 5: "adjustment",
                 6: "stripe_fee", 7: "payout"}  # fmt: skip
        categories = {1: "charge", 2: "refund", 3: "transfer", 4: "dispute",
                      5: "dispute_reversal", 6: "fee", 7: "payout"}  # fmt: skip
        offsets = {1: 0, 2: _PIECE * 2, 3: _PIECE * 3, 4: _PIECE * 4, 5: _PIECE * 5,
                   6: _PIECE * 6, 7: _PIECE * 7}  # fmt: skip
        charge = self.mkid("ch_", "ch.id", "idx")
        sources = {
            1: charge,
            2: self.mkid("re_", "re.id", "idx"),
            3: self.mkid("tr_", "tr.id", "idx"),
            4: self.mkid("du_", "du.id", "idx"),
            5: self.mkid("du_", "du.id", "idx"),
            6: "NULL",
            7: self.mkid("po_", "po.id", "idx"),
        }
        self.sql(f"""
        CREATE TABLE {_data("balance_transactions")} AS
        SELECT {self.mkid("txn_", "txn.id", _case_int("piece", offsets) + " + idx")} AS id,
               created, {_case_int("piece", types, quote=True)} AS type,
               {_case_int("piece", categories, quote=True)} AS reporting_category,
               amount, fee, net, currency, exchange_rate,
               {_case_int("piece", sources)} AS source_id,
               CASE piece WHEN 4 THEN 'Chargeback withdrawal for ' || {charge}
                          WHEN 5 THEN 'Chargeback reversal for ' || {charge}
                          ELSE description END AS description,
               available_on,
               CASE WHEN payout_key IS NOT NULL THEN {self.mkid("po_", "po.id", "payout_key")} END
                   AS automatic_transfer_id,
               CASE WHEN available_on <= {_ts(DATA_LOAD_TIME)} THEN 'available' ELSE 'pending' END
                   AS status,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM bt;
        """)

    def mrr_events(self) -> None:
        """Subscription starts and ends as MRR changes (monthly-normalised amounts)."""
        mrr = f"round({self.price_amount('price_idx')} * quantity / months)::BIGINT"
        self.sql(f"""
        CREATE TABLE {_data("subscription_item_change_events_v2_beta")} AS
        SELECT event_timestamp, event_timestamp AS local_event_timestamp, event_type, currency,
               {self.mkid("cus_", "cus.id", "cust_idx")} AS customer_id,
               sign * {mrr} AS mrr_change, sign * quantity AS quantity_change,
               {self.price_id("price_idx")} AS price_id,
               {self.mkid("prod_", "prod.id", "p")} AS product_id,
               {self.mkid("sub_", "sub.id", "i")} AS subscription_id,
               {self.mkid("si_", "si.id", "i")} AS subscription_item_id
        FROM (
            SELECT *, anchor AS event_timestamp, 'ACTIVE_START' AS event_type, 1 AS sign,
                   i * 2 AS ord
            FROM sub WHERE anchor < {_ts(DATA_END)}
            UNION ALL
            SELECT *, ended_at, 'ACTIVE_END', -1, i * 2 + 1
            FROM sub WHERE ended_at IS NOT NULL AND anchor < ended_at)
        ORDER BY event_timestamp, ord;
        """)


def _case_int(key: str, mapping: Mapping[int, object], *, quote: bool = False) -> str:
    """``(CASE key WHEN k THEN v ...)`` for small integer keys (values quoted if ``quote``)."""
    whens = " ".join(f"WHEN {k} THEN {_lit(str(v)) if quote else v}" for k, v in mapping.items())
    return f"(CASE {key} {whens} END)"
