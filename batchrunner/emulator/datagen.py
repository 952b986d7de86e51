"""Synthetic Stripe-like data for the emulator, generated inside DuckDB and cached on disk.

Every published Sigma table is created (empty unless listed below) with its published column
names and types. The core payment tables are filled with three years of consistent history:

    customers ─┬─ subscriptions ─ subscription_items ─ prices ─ products
               ├─ invoices ─ invoice_line_items
               └─ charges ─┬─ payment_intents
                           ├─ refunds
                           ├─ disputes
                           └─ balance_transactions ─ (payouts, transfers, Stripe fees)

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
import uuid
import zlib
from collections.abc import Iterator, Sequence
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
GENERATOR_VERSION = 1

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
    """Half the machine's RAM: room for the intermediate tables without taking it all."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "4GB"
    return f"{max(1, total // 2 // 2**20)}MB"


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

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_TRIPLES = "".join(a + b + c for a in _B62 for b in _B62 for c in _B62)
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
        # Bounded memory: past the limit intermediate tables spill to disk (DuckDB's default
        # would let the buffer pool take 80% of the machine).
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


class _Generator:
    """Builds every table in one DuckDB connection; one method per table family."""

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
        CREATE TEMP MACRO b3(v) AS substr('{_B62_TRIPLES}', ((v) % 238328)::BIGINT * 3 + 1, 3);
        CREATE TEMP MACRO b1(v) AS substr('{_B62}', ((v) % 62)::BIGINT + 1, 1);
        CREATE TEMP MACRO id_h(salt, n) AS
            hash((n)::BIGINT, (salt)::BIGINT, ({seed})::BIGINT, 7::BIGINT);
        -- for each salt a bijection of [0, 2^40) (affine map, then an xorshift): unique ids
        CREATE TEMP MACRO id_x(salt, n) AS
            (((n)::BIGINT * 5647565 + ((salt)::BIGINT * 40503 + {(seed * 2654435761) % _MASK40})
              % {_MASK40}) % {_MASK40});
        CREATE TEMP MACRO id_y(salt, n) AS xor(id_x(salt, n), (id_x(salt, n) << 13) % {_MASK40});
        CREATE TEMP MACRO mkid(prefix, salt, n) AS concat(
            prefix, b3(id_h(salt, n)), b3(id_y(salt, n) // 238328),
            b1(id_h(salt, n) // 56800235584), b3(id_y(salt, n)),
            b1(id_y(salt, n) // 56800235584), b3(id_h(salt, n) >> 40));
        CREATE TEMP MACRO cur_idx(c) AS list_position({_list([c[0] for c in _CURRENCIES])}, c) - 1;
        CREATE TEMP MACRO cur_exp(c) AS CASE WHEN c = 'jpy' THEN 0 ELSE 2 END;
        """)

    # -- exchange rates --------------------------------------------------------------------------

    def fx(self) -> None:
        """Daily rates (units per USD) drifting ±4% around a base, one row per day."""
        phases = {c[0]: (_salt(f"fx.{c[0]}") + self.seed) % 1000 / 1000 for c in _CURRENCIES}
        rate = {
            c[
                0
            ]: f"round({c[2]} * (1 + 0.04 * sin(2 * pi() * (d / 365.0 + {phases[c[0]]:.3f}))), 6)"
            if c[0] != "usd"
            else "1.0"
            for c in _CURRENCIES
        }
        json_args = ", ".join(f"{_lit(c)}, {expr}" for c, expr in sorted(rate.items()))
        days = (DATA_END - DATA_START).days
        self.sql(f"""
        CREATE TEMP TABLE fx_day AS
        SELECT d, {_ts(DATA_START)} + to_days(d::INTEGER) AS day,
               {", ".join(f"{expr} AS r_{c}" for c, expr in rate.items())},
               json_object({json_args})::VARCHAR AS rates_json
        FROM range({days}) t(d);
        CREATE TABLE {_data("exchange_rates_from_usd")} AS
        SELECT day AS date, 'usd' AS sell_currency, rates_json AS buy_currency_exchange_rates
        FROM fx_day ORDER BY d;
        """)

    # -- customers ----------------------------------------------------------------------------

    def customers(self) -> None:
        n = self.n_customers
        cur = _weighted([(_lit(c[0]), c[1]) for c in _CURRENCIES], self.u("cus.currency", "i"))
        country = _case_map(
            "currency",
            {
                c: _pick(countries, self.u("cus.country", "i"))
                for c, countries in _COUNTRIES.items()
            },
        )
        city = _case_map(
            "country", {k: _pick(v, self.u("cus.city", "i")) for k, v in _CITIES.items()}
        )
        first = _pick(_FIRST_NAMES, self.u("cus.first", "i"))
        last = _pick(_LAST_NAMES, self.u("cus.last", "i"))
        brand = _weighted(
            [("'visa'", 0.5), ("'mastercard'", 0.3), ("'amex'", 0.12), ("'discover'", 0.04),
             ("'jcb'", 0.02), ("'unionpay'", 0.02)],
            self.u("cus.brand", "i"),
        )  # fmt: skip
        funding = _weighted(
            [("'credit'", 0.6), ("'debit'", 0.37), ("'prepaid'", 0.03)], self.u("cus.fund", "i")
        )
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
        CREATE TEMP TABLE cust_a AS
        SELECT i, {self.mkid("cus_", "cus.id", "i")} AS id,
               tq((i + {self.u("cus.t", "i")}) / {n}) AS created,
               {cur} AS currency,
               {first} AS first_name, {last} AS last_name,
               {_pick(_STREETS, self.u("cus.street", "i"))} AS street_name,
               {self.mkid("pm_", "cus.pm", "i")} AS pm_id,
               {self.mkid("card_", "cus.card", "i")} AS card_id,
               concat(b3(id_h({_salt("cus.fp")}, i)), b3(id_h({_salt("cus.fp")}, i) >> 20),
                      b3(id_h({_salt("cus.fp")}, i) >> 40), b3(id_h({_salt("cus.fp2")}, i)),
                      b3(id_h({_salt("cus.fp2")}, i) >> 30), b1(id_h({_salt("cus.fp2")}, i) >> 50)
               ) AS fingerprint,
               {brand} AS card_brand, {funding} AS card_funding,
               lpad((hash(i::BIGINT, {_salt("cus.last4")}::BIGINT, {self.seed}::BIGINT)
                     % 10000)::VARCHAR, 4, '0') AS last4,
               1 + floor({self.u("cus.expm", "i")} * 12)::BIGINT AS exp_month,
               2025 + floor({self.u("cus.expy", "i")} * 7)::BIGINT AS exp_year
        FROM range({n}) t(i);
        CREATE TEMP TABLE cust_b AS
        SELECT *, {country} AS country FROM cust_a;
        CREATE TEMP TABLE cust AS
        SELECT *, {city} AS city,
               (1 + floor({self.u("cus.no", "i")} * 240)::BIGINT)::VARCHAR || ' ' || street_name
                   AS street,
               first_name || ' ' || last_name AS name,
               lower(regexp_replace(strip_accents(first_name), '[^A-Za-z]', '', 'g')) || '.' ||
               lower(regexp_replace(strip_accents(last_name), '[^A-Za-z]', '', 'g')) ||
               (i % 997)::VARCHAR || '@example.com' AS email
        FROM cust_b;
        DROP TABLE cust_a; DROP TABLE cust_b;
        CREATE TABLE {_data("customers")} AS
        SELECT id, created, currency, name, email, {desc} AS description,
               country AS address_country, city AS address_city, street AS address_line1,
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
               pm_id AS invoice_settings_default_payment_method_id,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM cust ORDER BY i;
        """)

    # -- products and prices ------------------------------------------------------------------

    def catalog(self) -> None:
        rows = []
        for p, (name, desc, _, _) in enumerate(_PRODUCTS):
            rows.append(f"({p}, {_lit(name)}, {_lit(desc)})")
        self.sql(f"""
        CREATE TEMP TABLE prod AS
        SELECT p, {self.mkid("prod_", "prod.id", "p")} AS id, name, description,
               {_ts(DATA_START)} + to_hours(p::BIGINT) AS created
        FROM (VALUES {", ".join(rows)}) v(p, name, description);
        CREATE TABLE {_data("products")} AS
        SELECT id, name, description, created, true AS active, 'service' AS type,
               false AS shippable, {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM prod ORDER BY p;
        """)
        price_rows = []
        for p, (name, _, usd_month, _) in enumerate(_PRODUCTS):
            for interval in (0, 1):  # month, year
                for c, (code, _, per_usd, exponent, _) in enumerate(_CURRENCIES):
                    idx = p * 14 + interval * 7 + c
                    major = usd_month / 100 * (10 if interval else 1) * per_usd
                    if exponent == 0:
                        amount = max(100, round(major / 100) * 100)
                    else:  # a charm price: whole units minus one cent
                        amount = max(99, round(major) * 100 - 1)
                    label = "yearly" if interval else "monthly"
                    nickname = f"{name} – {label} ({code.upper()})"
                    price_rows.append(
                        f"({idx}, {p}, {interval}, {_lit(code)}, {amount}, {_lit(nickname)})"
                    )
        self.sql(f"""
        CREATE TEMP TABLE price AS
        SELECT v.*, {self.mkid("price_", "price.id", "v.idx")} AS id,
               prod.id AS product_id, prod.name AS product_name,
               CASE WHEN v.iv = 1 THEN 'year' ELSE 'month' END AS interval,
               CASE WHEN v.iv = 1 THEN 12 ELSE 1 END AS months,
               prod.created + INTERVAL 1 MINUTE AS created
        FROM (VALUES {", ".join(price_rows)}) v(idx, p, iv, currency, unit_amount, nickname)
        JOIN prod USING (p);
        CREATE TABLE {_data("prices")} AS
        SELECT id, product_id, currency, unit_amount, unit_amount::VARCHAR AS unit_amount_decimal,
               nickname, interval AS recurring_interval, 1 AS recurring_interval_count,
               'licensed' AS recurring_usage_type, 'recurring' AS type, true AS active,
               'per_unit' AS billing_scheme, 'unspecified' AS tax_behavior, created,
               CASE WHEN p IN (1, 3) THEN 14 END AS recurring_trial_period_days,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM price ORDER BY idx;
        """)

    # -- subscriptions ------------------------------------------------------------------------

    def subscriptions(self) -> None:
        n, nc = self.n_subscriptions, self.n_customers
        product = _weighted(
            [(str(p), w) for p, w in enumerate(_PRODUCT_WEIGHTS)], self.u("sub.product", "i")
        )
        life = (  # billing periods until cancellation: geometric (churn 3.5%/month, 25%/year)
            f"1 + floor(ln(1 - {self.u('sub.life', 's.i')}) / "
            f"ln(CASE WHEN s.iv = 1 THEN 0.75 ELSE 0.965 END))::BIGINT"
        )
        self.sql(f"""
        CREATE TEMP TABLE sub_a AS
        SELECT i, q, {self.mkid("sub_", "sub.id", "i")} AS id,
               {self.mkid("si_", "si.id", "i")} AS item_id,
               tq(q) AS created,
               greatest(0, floor({self.u("sub.cust", "i")} * (q * {nc} - 1)))::BIGINT AS cust_idx,
               {product} AS p,
               {self.u("sub.trial", "i")} < 0.25 AS has_trial,
               CASE WHEN {self.u("sub.qty", "i")} < 0.8 THEN 1
                    ELSE 2 + floor({self.u("sub.qty2", "i")} * 4)::BIGINT END AS quantity
        FROM (SELECT i, (i + {self.u("sub.t", "i")}) / {n} AS q FROM range({n}) t(i));
        CREATE TEMP TABLE sub_b AS
        SELECT s.*, c.id AS customer_id, c.currency, c.email AS customer_email,
               c.name AS customer_name, c.country AS customer_country,
               CASE WHEN s.p = 6 OR {self.u("sub.yearly", "s.i")} < 0.2 THEN 1 ELSE 0 END AS iv
        FROM sub_a s JOIN cust c ON c.i = s.cust_idx;
        CREATE TEMP TABLE sub_c AS
        SELECT s.*, pr.id AS price_id, pr.unit_amount, pr.months, pr.interval,
               pr.nickname AS price_nickname, pr.product_id, pr.product_name,
               CASE WHEN s.has_trial THEN s.created + INTERVAL 14 DAY END AS trial_end,
               CASE WHEN s.has_trial THEN s.created + INTERVAL 14 DAY ELSE s.created END AS anchor,
               {life} AS life
        FROM sub_b s JOIN price pr ON pr.idx = s.p * 14 + s.iv * 7 + cur_idx(s.currency);
        CREATE TEMP TABLE sub AS
        SELECT *,
               CASE WHEN ended < {_ts(DATA_END)} THEN ended END AS ended_at,
               -- billing periods started before the sub ended (or the data ends)
               CASE WHEN anchor >= least(ended, {_ts(DATA_END)}) THEN 0
                    ELSE date_sub('month', anchor,
                                  least(ended, {_ts(DATA_END)}) - INTERVAL 1 SECOND) // months + 1
               END AS n_periods
        FROM (SELECT *, anchor + to_months((life * months)::INTEGER) AS ended FROM sub_c);
        DROP TABLE sub_a; DROP TABLE sub_b; DROP TABLE sub_c;
        """)

    def invoices(self) -> None:
        """One invoice per billing period (plus a $0 one when a trial starts)."""
        self.sql(f"""
        CREATE TEMP TABLE inv_a AS
        SELECT s.* EXCLUDE (id), s.id AS sub_id, k, s.i * 4096 + k AS inv_key,
               CASE WHEN has_trial AND k = 0 THEN created
                    WHEN has_trial THEN anchor + to_months(((k - 1) * months)::INTEGER)
                    ELSE anchor + to_months((k * months)::INTEGER) END AS period_start,
               CASE WHEN has_trial AND k = 0 THEN 0 ELSE unit_amount * quantity END AS total
        FROM (SELECT *, unnest(range(n_periods + CASE WHEN has_trial THEN 1 ELSE 0 END)) AS k
              FROM sub) s;
        CREATE TEMP TABLE inv AS
        SELECT *, {self.mkid("in_", "inv.id", "inv_key")} AS id,
               {self.mkid("il_", "il.id", "inv_key")} AS line_id,
               CASE WHEN has_trial AND k = 0 THEN trial_end
                    ELSE period_start + to_months(months::INTEGER) END AS period_end,
               period_start + to_seconds((1800 + floor({self.u("inv.delay", "inv_key")}
                   * 3600))::BIGINT) AS charge_at,
               {self.u("inv.fail", "inv_key")} < 0.06 AS failed
        FROM inv_a WHERE period_start < {_ts(DATA_END)}
            AND (ended_at IS NULL OR period_start < ended_at);
        DROP TABLE inv_a;
        CREATE TEMP TABLE inv_charge AS
        SELECT inv_key, id AS invoice_id, charge_at AS created, cust_idx, currency, total AS amount,
               failed, CASE WHEN k <= (CASE WHEN has_trial THEN 1 ELSE 0 END)
                            THEN 'Subscription creation' ELSE 'Subscription update' END
                   AS description
        FROM inv WHERE total > 0 AND charge_at < {_ts(DATA_END)};
        """)

    def charges(self) -> None:
        n_invoice_charges = self.count("inv_charge")
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
        fail_code = _weighted(
            [("'card_declined'", 0.55), ("'insufficient_funds'", 0.2), ("'expired_card'", 0.1),
             ("'incorrect_cvc'", 0.1), ("'processing_error'", 0.05)],
            self.u("ch.fcode", "cidx"),
        )  # fmt: skip
        self.sql(f"""
        CREATE TEMP TABLE oneoff AS
        SELECT i, q, tq(q) AS created,
               CASE WHEN {self.u("ch.guest", "i")} < 0.1 THEN NULL
                    ELSE greatest(0, floor({self.u("ch.cust", "i")} * (q * {nc} - 1)))::BIGINT
               END AS cust_idx,
               {amount_major} AS amount_major, {desc} AS description, {guest_cur} AS guest_currency
        FROM (SELECT i, (i + {self.u("ch.t", "i")}) / {n} AS q FROM range({n}) t(i));
        CREATE TEMP TABLE charge_in AS
        SELECT o.i AS cidx, o.created, o.cust_idx, c.currency AS cust_currency,
               coalesce(c.currency, o.guest_currency) AS currency,
               NULL::BIGINT AS inv_key, NULL::VARCHAR AS invoice_id, o.description,
               {self.u("ch.fail", "o.i")} < 0.08 AS failed, o.amount_major
        FROM oneoff o LEFT JOIN cust c ON c.i = o.cust_idx;
        CREATE TEMP TABLE charge_a AS
        SELECT cidx, created, cust_idx, currency, inv_key, invoice_id, description, failed,
               CASE WHEN cur_exp(currency) = 0
                    THEN greatest(50, round(amount_major * {per_usd}))::BIGINT
                    ELSE greatest(50, round(amount_major * {per_usd} * 100))::BIGINT END AS amount
        FROM charge_in
        UNION ALL
        SELECT {_INVOICE_CHARGE} + inv_key AS cidx, created, cust_idx, currency, inv_key,
               invoice_id,
               description, failed, amount
        FROM inv_charge;
        DROP TABLE charge_in; DROP TABLE oneoff;
        """)
        fx_rate = _case_map("ch.currency", {c[0]: f"fx_day.r_{c[0]}" for c in _CURRENCIES}, "1.0")
        self.sql(f"""
        CREATE TEMP TABLE charge_b AS
        SELECT ch.*, NOT ch.failed AS succeeded,
               ch.currency IN ({", ".join(_lit(c[0]) for c in _CURRENCIES if c[4])})
                   AS settles_same,
               round(1.0 / {fx_rate} * (1 + ({self.u("ch.fxn", "cidx")} - 0.5) * 0.01), 6)
                   AS rate_to_usd,
               {self.u("ch.refund", "cidx")} < 0.07 AS wants_refund,
               ch.created + to_seconds((3600 + floor({self.u("ch.rdelay", "cidx")}
                   * 30 * 86400))::BIGINT) AS refund_at,
               {self.u("ch.dispute", "cidx")} < 0.006 AS wants_dispute,
               ch.created + to_seconds((10 * 86400 + floor({self.u("ch.ddelay", "cidx")}
                   * 50 * 86400))::BIGINT) AS dispute_at,
               {self.u("ch.rfull", "cidx")} < 0.7 AS full_refund
        FROM charge_a ch
        JOIN fx_day ON fx_day.d = date_sub('day', {_ts(DATA_START)}, ch.created);
        DROP TABLE charge_a;
        CREATE TEMP TABLE charge AS
        SELECT ch.*, c.*,
               {self.mkid("ch_", "ch.id", "cidx")} AS id,
               {self.mkid("pi_", "pi.id", "cidx")} AS pi_id,
               CASE WHEN succeeded THEN {self.mkid("txn_", "txn.id", "cidx")} END AS bt_id,
               CASE WHEN has_refund THEN {self.mkid("re_", "re.id", "cidx")} END AS refund_id,
               CASE WHEN has_refund THEN {self.mkid("txn_", "txn.id", f"{_PIECE * 2} + cidx")}
                   END AS refund_bt_id,
               CASE WHEN has_dispute THEN {self.mkid("du_", "du.id", "cidx")} END AS dispute_id,
               CASE WHEN has_dispute THEN {self.mkid("txn_", "txn.id", f"{_PIECE * 4} + cidx")}
                   END AS dispute_bt_id,
               CASE WHEN succeeded THEN round(bt_amount * 0.029)::BIGINT
                   + CASE settle_currency WHEN 'eur' THEN 25 WHEN 'gbp' THEN 20 ELSE 30 END
                   + CASE WHEN settles_same THEN 0 ELSE round(bt_amount * 0.01)::BIGINT END
               END AS fee,
               CASE WHEN has_refund THEN
                   CASE WHEN full_refund THEN amount
                        ELSE greatest(1, floor(amount * (0.2 + 0.7
                             * {self.u("ch.rpart", "cidx")})))::BIGINT END
               ELSE 0 END AS amount_refunded,
               {fail_code} AS failure_code
        FROM (
            SELECT *,
                   CASE WHEN settles_same THEN currency ELSE 'usd' END AS settle_currency,
                   CASE WHEN settles_same THEN NULL ELSE rate_to_usd END AS exchange_rate,
                   CASE WHEN settles_same THEN amount
                        ELSE round(amount / CASE WHEN cur_exp(currency) = 0 THEN 1 ELSE 100 END
                                   * rate_to_usd * 100)::BIGINT END AS bt_amount,
                   succeeded AND wants_refund AND refund_at < {_ts(DATA_END)} AS has_refund,
                   succeeded AND NOT (wants_refund AND refund_at < {_ts(DATA_END)})
                       AND wants_dispute AND dispute_at < {_ts(DATA_END)} AS has_dispute
            FROM charge_b) ch
        LEFT JOIN (SELECT i AS c_i, id AS c_id, pm_id AS c_pm_id, card_id AS c_card_id,
                          card_brand AS c_brand, card_funding AS c_funding, country AS c_country,
                          last4 AS c_last4, exp_month AS c_exp_month, exp_year AS c_exp_year,
                          fingerprint AS c_fingerprint, name AS c_name, email AS c_email,
                          city AS c_city, street AS c_street FROM cust) c ON c.c_i = ch.cust_idx
        -- sorted once here, so the tables built from it are plain order-preserving scans
        ORDER BY ch.created, ch.cidx;
        DROP TABLE charge_b;
        """)
        self.insert_charges()
        self.insert_payment_intents()
        self.insert_refunds_and_disputes()
        self.insert_invoice_tables()

    def insert_charges(self) -> None:
        fail_message = _case_map(
            "ch.failure_code",
            {
                "card_declined": "'Your card was declined.'",
                "insufficient_funds": "'Your card has insufficient funds.'",
                "expired_card": "'Your card has expired.'",
                "incorrect_cvc": "'Your card''s security code is incorrect.'",
                "processing_error": "'An error occurred while processing your card. Try again.'",
            },
        )
        blocked = f"{self.u('ch.blocked', 'ch.cidx')} < 0.1"
        guest = "ch.c_i IS NULL"
        self.sql(f"""
        CREATE TABLE {_data("charges")} AS
        SELECT ch.id, ch.created, ch.amount, ch.currency, ch.description,
               ch.c_id AS customer_id, ch.invoice_id, ch.pi_id AS payment_intent,
               CASE WHEN ch.succeeded THEN 'succeeded' ELSE 'failed' END AS status,
               ch.succeeded AS paid, ch.succeeded AS captured,
               CASE WHEN ch.succeeded THEN ch.created END AS captured_at,
               ch.amount_refunded, ch.has_refund AND ch.full_refund AS refunded,
               ch.dispute_id, ch.bt_id AS balance_transaction_id,
               CASE WHEN ch.failed THEN ch.failure_code END AS failure_code,
               CASE WHEN ch.failed THEN {fail_message} END AS failure_message,
               CASE WHEN ch.succeeded THEN 'authorized'
                    WHEN {blocked} THEN 'blocked' ELSE 'issuer_declined' END AS outcome_type,
               CASE WHEN ch.succeeded THEN 'approved_by_network'
                    WHEN {blocked} THEN 'not_sent_to_network'
                    ELSE 'declined_by_network' END AS outcome_network_status,
               CASE WHEN ch.failed AND {blocked} THEN 'highest_risk_level'
                    WHEN ch.failed THEN 'generic_decline' END AS outcome_reason,
               CASE WHEN ch.failed AND {blocked} THEN 'highest'
                    WHEN {self.u("ch.risk", "ch.cidx")} < 0.08 THEN 'elevated'
                    ELSE 'normal' END AS outcome_risk_level,
               floor({self.u("ch.score", "ch.cidx")} * 60)::BIGINT
                   + CASE WHEN ch.failed AND {blocked} THEN 40 ELSE 0 END AS outcome_risk_score,
               CASE WHEN ch.succeeded THEN 'Payment complete.'
                    WHEN {blocked} THEN 'Stripe blocked this payment as too risky.'
                    ELSE 'The bank did not return any further details with this decline.'
               END AS outcome_seller_message,
               'card' AS payment_method_type,
               -- guests (no customer) pay with a one-off card; CASE evaluates only what it needs
               CASE WHEN {guest} THEN {self.mkid("pm_", "ch.pm", "ch.cidx")} ELSE ch.c_pm_id END
                   AS payment_method_id,
               CASE WHEN {guest} THEN {self.mkid("card_", "ch.card", "ch.cidx")}
                    ELSE ch.c_card_id END AS card_id,
               coalesce(ch.c_brand, 'visa') AS card_brand,
               coalesce(ch.c_funding, 'credit') AS card_funding,
               coalesce(ch.c_country, 'US') AS card_country,
               CASE WHEN {guest} THEN lpad((ch.cidx % 10000)::VARCHAR, 4, '0')
                    ELSE ch.c_last4 END AS card_last4,
               coalesce(ch.c_exp_month, 12) AS card_exp_month,
               coalesce(ch.c_exp_year, 2030) AS card_exp_year,
               CASE WHEN {guest} THEN concat(b3(id_h(11, ch.cidx)), b3(id_h(12, ch.cidx)),
                        b3(id_h(13, ch.cidx)), b3(id_h(14, ch.cidx)), b3(id_h(15, ch.cidx)),
                        b1(id_h(16, ch.cidx))) ELSE ch.c_fingerprint END AS card_fingerprint,
               ch.c_name AS card_name,
               CASE WHEN {guest} THEN NULL ELSE 'pass' END AS card_cvc_check,
               CASE WHEN {guest} THEN NULL ELSE 'pass' END AS card_address_zip_check,
               ch.c_country AS card_address_country, ch.c_city AS card_address_city,
               ch.c_street AS card_address_line1,
               CASE WHEN ch.succeeded THEN ch.c_email END AS receipt_email,
               CASE WHEN ch.succeeded AND ch.c_email IS NOT NULL
                    THEN '1' || lpad((ch.cidx % 10000000)::VARCHAR, 7, '0') || '-'
                         || lpad(((ch.cidx // 7) % 10000)::VARCHAR, 4, '0') END AS receipt_number,
               'BATCHRUNNER* DEMO' AS calculated_statement_descriptor,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM charge ch;
        """)

    def insert_payment_intents(self) -> None:
        self.sql(f"""
        CREATE TABLE {_data("payment_intents")} AS
        SELECT ch.pi_id AS id,
               greatest({_ts(DATA_START)}, ch.created - INTERVAL 2 SECOND) AS created,
               ch.amount, ch.currency, ch.c_id AS customer_id, ch.invoice_id, ch.description,
               CASE WHEN ch.succeeded THEN 'succeeded' ELSE 'requires_payment_method' END AS status,
               0 AS amount_capturable, 'automatic' AS capture_method,
               'automatic' AS confirmation_method, 'card' AS payment_method_types,
               CASE WHEN ch.succeeded AND ch.c_i IS NOT NULL THEN ch.c_pm_id END
                   AS payment_method_id,
               CASE WHEN ch.failed THEN 'card_error' END AS last_payment_error_type,
               CASE WHEN ch.failed THEN ch.id END AS last_payment_error_charge,
               CASE WHEN ch.invoice_id IS NOT NULL THEN 'off_session' END AS setup_future_usage,
               ch.c_email AS receipt_email, {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM charge ch;
        """)

    def insert_refunds_and_disputes(self) -> None:
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
        SELECT refund_id AS id, id AS charge_id, refund_at AS created, amount_refunded AS amount,
               currency, refund_bt_id AS balance_transaction_id, {reason} AS reason,
               'succeeded' AS status, pi_id AS refund_payment_intent,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM charge WHERE has_refund ORDER BY refund_at, cidx;
        CREATE TEMP TABLE dispute AS
        SELECT cidx, id AS charge_id, dispute_id AS id, dispute_at AS created, amount, currency,
               bt_amount, settle_currency, exchange_rate, dispute_bt_id, {d_reason} AS reason,
               {self.u("du.outcome", "cidx")} AS outcome,
               dispute_at + to_seconds((30 * 86400 + floor({self.u("du.rdelay", "cidx")}
                   * 45 * 86400))::BIGINT) AS closed_at
        FROM charge WHERE has_dispute;
        CREATE TEMP TABLE dispute_x AS
        SELECT *,
               CASE WHEN closed_at >= {_ts(DATA_END)} THEN
                        CASE WHEN created >= {_ts(DATA_END)} - INTERVAL 7 DAY THEN 'needs_response'
                             ELSE 'under_review' END
                    WHEN outcome < 0.35 THEN 'won' WHEN outcome < 0.9 THEN 'lost'
                    ELSE 'warning_closed' END AS status,
               {self.mkid("txn_", "txn.id", f"{_PIECE * 5} + cidx")} AS reversal_bt_id
        FROM dispute;
        CREATE TABLE {_data("disputes")} AS
        SELECT id, charge_id, created, amount, currency, reason, status,
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
        FROM dispute_x ORDER BY created, cidx;
        """)

    def insert_invoice_tables(self) -> None:
        self.sql(f"""
        CREATE TEMP TABLE inv_final AS
        SELECT inv.*, ch.id AS charge_id, ch.succeeded AS charge_ok, ch.created AS charged_at,
               CASE WHEN inv.total = 0 OR ch.succeeded THEN 'paid'
                    WHEN ch.id IS NULL OR inv.period_start >= {_ts(DATA_END)} - INTERVAL 30 DAY
                        THEN 'open'
                    WHEN {self.u("inv.void", "inv.inv_key")} < 0.5 THEN 'uncollectible'
                    ELSE 'void' END AS status
        FROM inv LEFT JOIN charge ch ON ch.cidx = {_INVOICE_CHARGE} + inv.inv_key;
        CREATE TABLE {_data("invoices")} AS
        SELECT id, customer_id, sub_id AS subscription_id, charge_id, currency,
               period_start AS date, period_start, period_end,
               total AS amount_due, CASE WHEN status = 'paid' THEN total ELSE 0 END AS amount_paid,
               CASE WHEN status = 'paid' THEN 0 ELSE total END AS amount_remaining,
               total AS subtotal, total, 0 AS starting_balance, 0 AS ending_balance,
               status, status = 'paid' AS paid, false AS paid_out_of_band,
               charge_id IS NOT NULL AS attempted,
               CASE WHEN charge_id IS NULL THEN 0 WHEN charge_ok THEN 1
                    ELSE 1 + floor({self.u("inv.attempts", "inv_key")} * 3)::BIGINT END
                   AS attempt_count,
               status = 'open' AS auto_advance,
               CASE WHEN k = 0 THEN 'subscription_create' ELSE 'subscription_cycle' END
                   AS billing_reason,
               'charge_automatically' AS collection_method,
               right(sub_id, 8) || '-' || lpad((k + 1)::VARCHAR, 4, '0') AS number,
               customer_email, customer_name, customer_country AS customer_address_country,
               'none' AS customer_tax_exempt, false AS automatic_tax_enabled,
               period_start + INTERVAL 1 HOUR AS status_transitions_finalized_at,
               period_start + INTERVAL 1 HOUR AS effective_at,
               CASE WHEN status = 'paid' THEN coalesce(charged_at, period_start
                   + INTERVAL 1 HOUR) END AS status_transitions_paid_at,
               CASE WHEN status = 'void' THEN period_start + INTERVAL 20 DAY END
                   AS status_transitions_voided_at,
               CASE WHEN status = 'uncollectible' THEN period_start + INTERVAL 20 DAY END
                   AS status_transitions_marked_uncollectible_at,
               CASE WHEN status = 'open' THEN period_start + INTERVAL 3 DAY END
                   AS next_payment_attempt,
               period_start + INTERVAL 1 MINUTE AS webhooks_delivered_at,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM inv_final ORDER BY period_start, inv_key;
        CREATE TABLE {_data("invoice_line_items")} AS
        SELECT line_id AS id, id AS invoice_id, total AS amount, currency,
               CASE WHEN total = 0 THEN 'Trial period for ' || product_name
                    ELSE quantity::VARCHAR || ' × ' || product_name || ' (' || price_nickname || ')'
               END AS description,
               true AS discountable, period_start, period_end, price_id AS plan_id, price_id,
               false AS proration, quantity, sub_id AS subscription,
               item_id AS subscription_item_id, 'subscription' AS source_type, sub_id AS source_id,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM inv_final ORDER BY period_start, inv_key;
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
               arg_max(period_end, k) AS cur_end, arg_max(id, k) AS latest_invoice_id,
               arg_max(status, k) AS last_status
        FROM inv_final GROUP BY i;
        CREATE TABLE {_data("subscriptions")} AS
        SELECT s.id, s.customer_id, s.created, s.created AS start, s.created AS start_date,
               s.price_id, s.price_id AS plan_id, s.quantity,
               CASE WHEN s.ended_at IS NOT NULL THEN 'canceled'
                    WHEN s.trial_end > {_ts(DATA_END)} THEN 'trialing'
                    WHEN l.last_status IN ('open', 'uncollectible', 'void') THEN 'past_due'
                    ELSE 'active' END AS status,
               s.anchor AS billing_cycle_anchor, 'charge_automatically' AS billing,
               l.cur_start AS current_period_start, l.cur_end AS current_period_end,
               l.latest_invoice_id,
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
        FROM sub s LEFT JOIN sub_last l USING (i) ORDER BY s.created, s.i;
        CREATE TABLE {_data("subscription_items")} AS
        SELECT s.item_id AS id, s.id AS subscription_id, s.id AS subscription,
               epoch(s.created)::BIGINT AS created, s.quantity,
               s.price_id, s.price_nickname, s.product_id AS price_product_id,
               s.currency AS price_currency, s.unit_amount AS price_unit_amount,
               s.interval AS price_recurring_interval, 1 AS price_recurring_interval_count,
               p.created AS price_created, s.price_id AS plan_id, s.price_nickname AS plan_nickname,
               s.product_id AS plan_product_id, s.currency AS plan_currency,
               s.unit_amount AS plan_amount, s.interval AS plan_interval,
               1 AS plan_interval_count, p.created AS plan_created,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM sub s JOIN price p ON p.id = s.price_id ORDER BY s.created, s.i;
        """)

    # -- transfers and the balance ------------------------------------------------------------

    def transfers(self) -> None:
        n = self.n_transfers
        self.sql(f"""
        CREATE TEMP TABLE xfer AS
        SELECT i, tq((i + {self.u("tr.t", "i")}) / {n}) AS created,
               {self.mkid("tr_", "tr.id", "i")} AS id,
               {self.mkid("txn_", "txn.id", f"{_PIECE * 3} + i")} AS bt_id,
               {
            self.mkid(
                "acct_", "acct.id", f"floor({self.u('tr.dest', 'i')} * {self.n_accounts})::BIGINT"
            )
        }
                   AS destination_id,
               greatest(100, round(lognormal(9.2, 1.0, {self.u("tr.a1", "i")},
                                             {self.u("tr.a2", "i")})))::BIGINT AS amount,
               CASE WHEN {self.u("tr.group", "i")} < 0.4
                    THEN 'ORDER_' || (10000 + i)::VARCHAR END AS transfer_group
        FROM range({n}) t(i);
        CREATE TABLE {_data("transfers")} AS
        SELECT id, created, created AS date, amount, 'usd' AS currency, 0 AS amount_reversed,
               false AS reversed, false AS automatic, bt_id AS balance_transaction_id,
               destination_id, transfer_group, 'paid' AS status, 'stripe_account' AS type,
               'card' AS source_type,
               CASE WHEN transfer_group IS NOT NULL THEN 'Payout share – ' || transfer_group END
                   AS description,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM xfer ORDER BY created, i;
        """)

    def balance_transactions(self) -> None:
        """Charges, refunds, disputes, transfers and Stripe fees, then daily payouts of them."""
        months = [(DATA_START.year + m // 12, m % 12 + 1) for m in range(36)]
        fee_rows = []
        for m, (year, month) in enumerate(months):
            start = datetime(year, month, 1)
            end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            period = f"({start:%Y-%m-%d} - {end:%Y-%m-%d})"
            fee_rows.append(f"({m * 2}, {_lit(end.strftime('%Y-%m-%d'))}, "
                            f"{_lit(f'Billing - Usage Fee {period}')})")  # fmt: skip
            fee_rows.append(f"({m * 2 + 1}, {_lit(end.strftime('%Y-%m-%d'))}, "
                            f"{_lit(f'Radar {period}: Radar for Fraud Teams')})")  # fmt: skip
        self.sql(f"""
        CREATE TEMP TABLE bt0 AS
        SELECT bt_id AS id, created, 'charge' AS type, 'charge' AS reporting_category,
               bt_amount AS amount, fee, settle_currency AS currency, exchange_rate,
               id AS source_id, description, 1 AS piece, cidx AS idx
        FROM charge WHERE succeeded
        UNION ALL
        SELECT refund_bt_id, refund_at, 'refund', 'refund',
               -CASE WHEN full_refund THEN bt_amount
                     ELSE round(amount_refunded * bt_amount / amount)::BIGINT END,
               0, settle_currency, exchange_rate, refund_id,
               'REFUND FOR CHARGE (' || coalesce(description, 'no description') || ')', 2, cidx
        FROM charge WHERE has_refund
        UNION ALL
        SELECT bt_id, created, 'transfer', 'transfer', -amount, 0, 'usd', NULL, id,
               NULL, 3, i
        FROM xfer
        UNION ALL
        SELECT dispute_bt_id, created, 'adjustment', 'dispute', -bt_amount,
               CASE settle_currency WHEN 'eur' THEN 2000 WHEN 'gbp' THEN 2000 ELSE 1500 END,
               settle_currency, exchange_rate, id, 'Chargeback withdrawal for ' || charge_id,
               4, cidx
        FROM dispute_x
        UNION ALL
        SELECT reversal_bt_id, closed_at, 'adjustment', 'dispute_reversal', bt_amount, 0,
               settle_currency, exchange_rate, id, 'Chargeback reversal for ' || charge_id, 5, cidx
        FROM dispute_x WHERE status = 'won'
        UNION ALL
        SELECT {self.mkid("txn_", "txn.id", f"{_PIECE * 6} + f")},
               CAST(d AS TIMESTAMP) + INTERVAL 23 HOUR + INTERVAL 30 MINUTE, 'stripe_fee', 'fee',
               -(500 + floor({self.u("fee.amt", "f")} * 20000)::BIGINT), 0, 'usd', NULL, NULL,
               description, 6, f
        FROM (VALUES {", ".join(fee_rows)}) v(f, d, description);
        CREATE TEMP TABLE bt1 AS
        SELECT *, amount - fee AS net,
               date_trunc('day', created)
                   + CASE WHEN piece = 1 THEN INTERVAL 2 DAY ELSE INTERVAL 1 DAY END AS available_on
        FROM bt0;
        DROP TABLE bt0;
        -- the payout that carries a transaction: the first payout day on or after it is available
        CREATE TEMP TABLE bt2 AS
        SELECT *, {_ts(DATA_START)} + to_days((ceil(date_sub('day', {_ts(DATA_START)},
                      available_on) / {self.payout_days}) * {self.payout_days})::INTEGER)
                   AS payout_day
        FROM bt1;
        DROP TABLE bt1;
        CREATE TEMP TABLE payout AS
        SELECT currency, payout_day, -sum(net)::BIGINT AS amount,
               date_sub('day', {_ts(DATA_START)}, payout_day) * 8 + cur_idx(currency) AS key
        FROM bt2 WHERE payout_day + INTERVAL 6 HOUR < {_ts(DATA_END)}
        GROUP BY currency, payout_day;
        CREATE TEMP TABLE payout_x AS
        SELECT *, {self.mkid("po_", "po.id", "key")} AS id,
               {self.mkid("txn_", "txn.id", f"{_PIECE * 7} + key")} AS bt_id
        FROM payout;
        CREATE TABLE {_data("balance_transactions")} AS
        SELECT id, created, type, reporting_category, amount, fee, net, currency, exchange_rate,
               source_id, description, available_on, automatic_transfer_id,
               CASE WHEN available_on <= {_ts(DATA_LOAD_TIME)} THEN 'available' ELSE 'pending' END
                   AS status,
               {_ts(DATA_LOAD_TIME)} AS batch_timestamp
        FROM (
            SELECT b.* EXCLUDE (payout_day), p.id AS automatic_transfer_id
            FROM bt2 b LEFT JOIN payout_x p USING (currency, payout_day)
            UNION ALL
            SELECT bt_id, payout_day + INTERVAL 6 HOUR, 'payout', 'payout', amount, 0, currency,
                   NULL, id, 'STRIPE PAYOUT', 7, key, amount, payout_day + INTERVAL 6 HOUR, id
            FROM payout_x)
        ORDER BY created, piece, idx;
        """)

    def mrr_events(self) -> None:
        """Subscription starts and ends as MRR changes (monthly-normalised amounts)."""
        self.sql(f"""
        CREATE TABLE {_data("subscription_item_change_events_v2_beta")} AS
        SELECT * EXCLUDE (ord) FROM (
            SELECT s.anchor AS event_timestamp, s.anchor AS local_event_timestamp,
                   'ACTIVE_START' AS event_type, s.currency, s.customer_id,
                   round(s.unit_amount * s.quantity / s.months)::BIGINT AS mrr_change,
                   s.quantity AS quantity_change, s.price_id, s.product_id,
                   s.id AS subscription_id, s.item_id AS subscription_item_id, s.i * 2 AS ord
            FROM sub s WHERE s.anchor < {_ts(DATA_END)}
            UNION ALL
            SELECT s.ended_at, s.ended_at, 'ACTIVE_END', s.currency, s.customer_id,
                   -round(s.unit_amount * s.quantity / s.months)::BIGINT, -s.quantity,
                   s.price_id, s.product_id, s.id, s.item_id, s.i * 2 + 1
            FROM sub s WHERE s.ended_at IS NOT NULL AND s.anchor < s.ended_at)
        ORDER BY event_timestamp, ord;
        """)
