"""Value types of configuration settings: how a raw YAML/TOML value is checked and converted into the
attribute stored on the config dataclasses, how it is written back into a config file, and how its
default is shown in the docs. Also the duration, byte-size and password-format parsers."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class FrozenMapping(Mapping[K, V], Generic[K, V]):
    """A read-only, hashable mapping, so config dataclasses holding tables stay hashable."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"


class Invalid(ValueError):
    """A raw value does not fit its type. The message says what is expected ("must be ...");
    the loader adds the file, the key path and (unless the setting is secret) the offending value."""


def show(raw: object) -> str:
    """Render a raw config value for an error message, in config-file notation."""
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return json.dumps(raw, ensure_ascii=False)
    if isinstance(raw, int | float):
        return repr(raw)
    if isinstance(raw, Mapping):
        return "a table"
    if isinstance(raw, list | tuple):
        return "a list"
    if isinstance(raw, datetime.date | datetime.time):
        return "a date/time"
    return type(raw).__name__


def literal(value: object) -> str:
    """A config-file value in compact YAML/TOML-like notation, for docs and diffs."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return show(value)


def _is_int(raw: object) -> bool:
    # bool is a subclass of int in Python; `port: true` must not read as port 1.
    return isinstance(raw, int) and not isinstance(raw, bool)


# ---------------------------------------------------------------------------------------------------
# Durations and byte sizes
# ---------------------------------------------------------------------------------------------------

_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"^(\d+)\s*(ms|s|m|h|d)?$")
DURATION_FORMS = 'integer milliseconds, or a string with an integer and a unit: "500ms", "5s", "10m", "1h", "1d"'
DURATION_HELP = f"a duration ({DURATION_FORMS})"


def parse_duration(raw: object) -> int:
    """A PgDoorman duration -> milliseconds. Integers are milliseconds; strings carry an integer
    mantissa and one of the suffixes ms/s/m/h/d (a bare digit string is milliseconds too)."""
    if _is_int(raw):
        assert isinstance(raw, int)
        if raw < 0:
            raise Invalid(f"must be {DURATION_HELP} >= 0")
        return raw
    if isinstance(raw, str):
        m = _DURATION_RE.match(raw.strip().lower())
        if m:
            return int(m.group(1)) * _DURATION_UNITS_MS[m.group(2) or "ms"]
    raise Invalid(f"must be {DURATION_HELP}")


def format_duration(ms: int) -> str | int:
    """Milliseconds -> the shortest exact duration string ("10m"); 0 stays the integer 0."""
    if ms == 0:
        return 0
    for suffix in ("d", "h", "m", "s"):
        unit = _DURATION_UNITS_MS[suffix]
        if ms % unit == 0:
            return f"{ms // unit}{suffix}"
    return f"{ms}ms"


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
_SIZE_RE = re.compile(r"^(\d+)\s*(b|k|kb|m|mb|g|gb)?$")
SIZE_FORMS = 'integer bytes, or a string with an integer and a unit: "512K", "1MB", "2G" (B, K/KB, M/MB, G/GB; binary)'
SIZE_HELP = f"a byte size ({SIZE_FORMS})"


def parse_byte_size(raw: object) -> int:
    """A PgDoorman byte size -> bytes. Suffixes B, K/KB, M/MB, G/GB are powers of 1024, any case."""
    if _is_int(raw):
        assert isinstance(raw, int)
        if raw < 0:
            raise Invalid(f"must be {SIZE_HELP} >= 0")
        return raw
    if isinstance(raw, str):
        m = _SIZE_RE.match(raw.strip().lower())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]
    raise Invalid(f"must be {SIZE_HELP}")


def format_byte_size(n: int) -> str | int:
    """Bytes -> the shortest exact size string ("256MB"); 0 stays the integer 0."""
    if n == 0:
        return 0
    for suffix, unit in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return n


def _human_bytes(n: int) -> str:
    for suffix, unit in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {suffix}"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------------------------
# Password formats
# ---------------------------------------------------------------------------------------------------

PasswordKind = Literal["md5", "scram", "jwt", "plain"]
MD5_PREFIX = "md5"
SCRAM_PREFIX = "SCRAM-SHA-256$"
JWT_PUBKEY_PREFIX = "jwt-pkey-fpath:"
JWT_PRIVKEY_PREFIX = "jwt-priv-key-fpath:"
_MD5_RE = re.compile(r"^md5[0-9a-fA-F]{32}$")
_SCRAM_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([^$:]+)\$([^$:]+):([^$:]+)$")


class ScramVerifier(NamedTuple):
    """A stored SCRAM-SHA-256 verifier as PostgreSQL keeps it in pg_authid.rolpassword."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"is not a valid SCRAM-SHA-256 verifier: {what} is not valid base64") from None


def parse_scram_verifier(text: str) -> ScramVerifier:
    """Parse `SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`."""
    m = _SCRAM_RE.match(text)
    if not m:
        raise Invalid(
            "is not a valid SCRAM-SHA-256 verifier "
            "(expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
        )
    iterations = int(m.group(1))
    if iterations < 1:
        raise Invalid("is not a valid SCRAM-SHA-256 verifier: iteration count must be >= 1")
    salt = _b64(m.group(2), "the SCRAM salt")
    stored = _b64(m.group(3), "the SCRAM StoredKey")
    server = _b64(m.group(4), "the SCRAM ServerKey")
    if not salt:
        raise Invalid("is not a valid SCRAM-SHA-256 verifier: the salt is empty")
    # SHA-256 digests are 32 bytes; anything else cannot verify a client proof.
    if len(stored) != 32 or len(server) != 32:
        raise Invalid("is not a valid SCRAM-SHA-256 verifier: StoredKey and ServerKey must be 32 bytes each")
    return ScramVerifier(iterations, salt, stored, server)


def password_kind(password: str) -> PasswordKind:
    """How a stored user password is to be used: an MD5 hash, a SCRAM verifier, a JWT public key
    reference (PgDoorman's `jwt-pkey-fpath:`), or plain text."""
    if password.startswith(SCRAM_PREFIX):
        return "scram"
    if _MD5_RE.match(password):
        return "md5"
    if password.startswith(JWT_PUBKEY_PREFIX):
        return "jwt"
    return "plain"


_HEX = frozenset("0123456789abcdefABCDEF")


def check_password_format(password: str) -> None:
    """Reject strings that claim to be a hash but are malformed: a damaged hash would otherwise be
    taken as a plain-text password and the user could never log in. `md5` + 32 hex digits is an MD5
    hash, `SCRAM-SHA-256$...` a SCRAM verifier, anything else plain text."""
    if password.startswith(SCRAM_PREFIX):
        parse_scram_verifier(password)
        return
    rest = password[len(MD5_PREFIX) :]
    if password.startswith(MD5_PREFIX) and not _MD5_RE.match(password):
        # A truncated hash (all hex, wrong length) or a 32-character tail with a typo in it.
        if (rest and all(c in _HEX for c in rest) and len(rest) >= 16) or len(rest) == 32:
            raise Invalid('looks like an MD5 hash but is not "md5" followed by 32 hex digits')


# ---------------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------------


class ValueType:
    """Base class. `annotation` is the Python type of parsed values (checked against the
    dataclasses by the consistency test); `doc_name` is what the docs call the type."""

    doc_name: str = "value"
    annotation: Any = object

    def parse(self, raw: object) -> Any:
        raise NotImplementedError

    def to_config(self, value: Any) -> Any:
        """A parsed value -> the value to write into a YAML/TOML file."""
        return value

    def describe(self, value: Any) -> str:
        """A parsed value as shown in the docs' "Default" column."""
        return f"`{literal(self.to_config(value))}`"


class Str(ValueType):
    doc_name = "string"
    annotation = str

    def __init__(self, nonempty: bool = False) -> None:
        self.nonempty = nonempty

    def parse(self, raw: object) -> str:
        if not isinstance(raw, str):
            hint = " (quote it)" if _is_int(raw) or isinstance(raw, float | bool) else ""
            raise Invalid(f"must be a string{hint}")
        if self.nonempty and not raw:
            raise Invalid("must be a non-empty string")
        return raw


class Password(Str):
    doc_name = "password"

    def parse(self, raw: object) -> str:
        value = super().parse(raw)
        check_password_format(value)
        return value


class Int(ValueType):
    doc_name = "integer"
    annotation = int

    def __init__(self, minimum: int | None = 0, maximum: int | None = None, unit: str = "") -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.unit = unit
        self.doc_name = self.expectation().removeprefix("an ") + (f", in {unit}" if unit else "")

    def expectation(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"an integer between {self.minimum} and {self.maximum}"
        if self.minimum is not None:
            return f"an integer >= {self.minimum}"
        if self.maximum is not None:
            return f"an integer <= {self.maximum}"
        return "an integer"

    def parse(self, raw: object) -> int:
        if not _is_int(raw):
            raise Invalid(f"must be {self.expectation()}")
        assert isinstance(raw, int)
        if (self.minimum is not None and raw < self.minimum) or (self.maximum is not None and raw > self.maximum):
            raise Invalid(f"must be {self.expectation()}")
        return raw

    def describe(self, value: Any) -> str:
        return f"`{value}`" + (f" {self.unit}" if self.unit else "")


class Port(Int):
    def __init__(self) -> None:
        super().__init__(1, 65535)
        self.doc_name = "port (1-65535)"


class Bool(ValueType):
    doc_name = "boolean"
    annotation = bool

    def parse(self, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise Invalid("must be true or false")
        return raw


class Choice(ValueType):
    doc_name = "enum"
    annotation = str

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.doc_name = " | ".join(f'"{c}"' for c in choices)

    def parse(self, raw: object) -> str:
        if not isinstance(raw, str) or raw not in self.choices:
            quoted = [f'"{c}"' for c in self.choices]
            if len(quoted) == 2:
                raise Invalid(f"must be {quoted[0]} or {quoted[1]}")
            raise Invalid(f"must be one of {', '.join(quoted)}")
        return raw


class Duration(ValueType):
    """Stored as integer milliseconds. `int_only_upstream` marks places where PgDoorman itself only
    takes integer milliseconds (we accept strings there too, but write integers so generated files
    stay loadable by PgDoorman)."""

    doc_name = "duration"
    annotation = int

    def __init__(self, int_only_upstream: bool = False) -> None:
        self.int_only_upstream = int_only_upstream

    def parse(self, raw: object) -> int:
        return parse_duration(raw)

    def to_config(self, value: Any) -> Any:
        return value if self.int_only_upstream else format_duration(value)

    def describe(self, value: Any) -> str:
        human = format_duration(value)
        return f"`{value}` ms" + (f" ({human})" if isinstance(human, str) else "")


class Seconds(Int):
    def __init__(self, minimum: int = 0) -> None:
        super().__init__(minimum, None, "seconds")


class ByteSize(ValueType):
    doc_name = "byte size"
    annotation = int

    def parse(self, raw: object) -> int:
        return parse_byte_size(raw)

    def to_config(self, value: Any) -> Any:
        return format_byte_size(value)

    def describe(self, value: Any) -> str:
        return f"`{value}`" + (f" ({_human_bytes(value)})" if value else "")


class OctalMode(ValueType):
    """A Unix permission mode written as an octal string ("0600", "660", "0o660"); only the rwx bits
    (0o777) are allowed because setuid/setgid/sticky bits make no sense on a socket file."""

    doc_name = "octal string"
    annotation = int

    def parse(self, raw: object) -> int:
        if not isinstance(raw, str):
            raise Invalid('must be an octal permission string such as "0600" (quote it)')
        text = raw.strip()
        digits = text[2:] if text[:2] in ("0o", "0O") else text
        if not digits or any(c not in "01234567" for c in digits):
            raise Invalid('must be an octal permission string such as "0600"')
        mode = int(digits, 8)
        if mode & ~0o777:
            raise Invalid("must only set permission bits within 0777")
        return mode

    def to_config(self, value: Any) -> Any:
        return f"{value:04o}"


class StrList(ValueType):
    doc_name = "list of strings"
    annotation = tuple[str, ...]

    def parse(self, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise Invalid("must be a list of strings")
        return tuple(raw)

    def to_config(self, value: Any) -> Any:
        return list(value)


class HttpUrlList(StrList):
    """A non-empty list of http:// or https:// URLs (patroni_api_urls)."""

    doc_name = "list of URLs"

    def parse(self, raw: object) -> tuple[str, ...]:
        urls = super().parse(raw)
        if not urls:
            raise Invalid("must list at least one URL")
        for u in urls:
            if not u.lower().startswith(("http://", "https://")) or len(u.split("://", 1)[1]) == 0:
                raise Invalid(f"{show(u)} is not an http:// or https:// URL")
        return urls


class PositiveDuration(Duration):
    """A duration above 0."""

    def parse(self, raw: object) -> int:
        value = parse_duration(raw)
        if value <= 0:
            raise Invalid("must be above 0")
        return value


_STARTUP_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_RESERVED_STARTUP_KEYS = frozenset({"user", "database", "replication", "options", "role", "session_authorization"})
# One level of startup_parameters may take this much of PostgreSQL's 10,000-byte startup packet.
STARTUP_LEVEL_BUDGET = 10000 - 512


def startup_size(params: Mapping[str, str]) -> int:
    """Bytes the settings take in a StartupMessage (name, NUL, value, NUL each)."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in params.items())


def startup_parameter_problem(key: object, text: str) -> str | None:
    """Why `key` = `text` cannot be a startup parameter (PgDoorman's rules), or None."""
    if not isinstance(key, str) or not _STARTUP_KEY_RE.match(key):
        return f"has an invalid parameter name {show(key)}"
    if key.lower() in _RESERVED_STARTUP_KEYS or key.lower().startswith("_pq_."):
        return f"must not set the reserved parameter {show(key)}"
    if "\0" in text:
        return f"has a NUL byte in the value of {show(key)}"
    return None


class StartupParameters(ValueType):
    """Backend StartupMessage GUCs: a table of name -> value. Numbers and booleans are accepted
    and sent as text (PostgreSQL parses every GUC from text anyway)."""

    doc_name = "table of strings"
    annotation = Mapping[str, str]

    def parse(self, raw: object) -> Mapping[str, str]:
        if not isinstance(raw, Mapping):
            raise Invalid("must be a table of parameter names to values")
        out: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or not _STARTUP_KEY_RE.match(key):
                raise Invalid(f"has an invalid parameter name {show(key)}")
            if isinstance(value, bool):
                text = "on" if value else "off"
            elif isinstance(value, str | int | float):
                text = str(value)
            else:
                raise Invalid(f"has a non-scalar value for {show(key)}")
            problem = startup_parameter_problem(key, text)
            if problem is not None:
                raise Invalid(problem)
            out[key] = text
        size = startup_size(out)
        if size > STARTUP_LEVEL_BUDGET:
            raise Invalid(f"takes {size} bytes of the startup packet, more than the {STARTUP_LEVEL_BUDGET} "
                          "one level may (PostgreSQL refuses packets over 10000)")
        return FrozenMapping(out)

    def to_config(self, value: Any) -> Any:
        return dict(value)



class WorkerThreads(ValueType):
    """"auto" (stored as None: the runtime picks one worker per CPU on free-threaded CPython and one
    worker when the GIL is on) or an explicit count >= 1."""

    doc_name = '"auto" or integer'
    annotation = int | None

    def parse(self, raw: object) -> int | None:
        if raw == "auto":
            return None
        if _is_int(raw) and isinstance(raw, int) and raw >= 1:
            return raw
        raise Invalid('must be "auto" or an integer >= 1')

    def to_config(self, value: Any) -> Any:
        return "auto" if value is None else value


@dataclass(frozen=True)
class HbaSource:
    """Where pg_hba rules come from: inline text (`pg_hba: "..."` or `{content: "..."}`) or a file
    (`{path: "..."}`)."""

    content: str | None = None
    path: str | None = None


class PgHbaRules(ValueType):
    doc_name = "string or {path} / {content} table"
    annotation = HbaSource

    def parse(self, raw: object) -> HbaSource:
        if isinstance(raw, str):
            return HbaSource(content=raw)
        if isinstance(raw, Mapping) and len(raw) == 1:
            ((key, value),) = raw.items()
            if key in ("path", "content") and isinstance(value, str):
                return HbaSource(**{key: value})
        raise Invalid('must be a string of rules or a table with exactly one of "path" or "content"')

    def to_config(self, value: Any) -> Any:
        assert isinstance(value, HbaSource)
        return {"path": value.path} if value.path is not None else value.content


class Subsection(ValueType):
    """Marks a key whose value is itself a section of the table (`users`, `auth_query`); the loader
    walks it with that section's fields."""

    def __init__(self, section: str, many: bool) -> None:
        self.section = section
        self.many = many
        self.doc_name = f"list of `{section}` tables" if many else f"`{section}` table"

    def parse(self, raw: object) -> Any:
        raise TypeError("subsections are walked by the loader, not parsed as values")
