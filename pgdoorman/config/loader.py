"""Reading config files (YAML or TOML, with `include.files`) and turning them into a validated
`Config`. Every problem found is collected, each naming the file, the key path and what is wrong,
and they are raised together as one `ConfigError`.

Plain data only: the files a config names (certificates, pg_hba files, JWT keys) and PAM are loaded and
checked by pgdoorman.resources, from the `Config.origins` this records, with messages of the same form."""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from pgdoorman.config.coordination import check_coordinators
from pgdoorman.config.fields import (
    FIELDS,
    NOT_IMPLEMENTED_WARNING,
    SECTIONS,
    field,
    fields_of,
    lookup,
)
from pgdoorman.config.model import (
    AuthQueryConfig,
    Config,
    General,
    KeyPath,
    Origin,
    PoolConfig,
    TalosConfig,
    UserConfig,
    WebConfig,
)
from pgdoorman.config.values import (
    FrozenMapping,
    Invalid,
    Subsection,
    show,
    startup_size,
)
from pgdoorman.config.yaml12 import parse_yaml

if sys.version_info >= (3, 11):  # noqa: UP036 - kept so the package also runs where tomli is needed
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class ConfigError(Exception):
    """The config could not be loaded. `errors` holds one line per problem, each starting with the
    file name; str() is those lines joined by newlines."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


TOP_LEVEL_KEYS = ("include", "general", "web", "prometheus", "talos", "pools")

PathSeg = str | int


def is_yaml_path(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def config_format_for(path: str) -> str:
    """The config format PgDoorman picks for a file name: "yaml" for .yaml/.yml, else "toml"."""
    return "yaml" if is_yaml_path(path) else "toml"


# ---------------------------------------------------------------------------------------------------
# Parsed documents remember, per key, which file the value came from (for error messages after merging).
# ---------------------------------------------------------------------------------------------------


class _Table(dict[Any, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.origin: dict[Any, str] = {}


class _Array(list[Any]):
    def __init__(self) -> None:
        super().__init__()
        self.origins: list[str] = []


def _tag(value: Any, file: str) -> Any:
    """Copy a parsed document into _Table/_Array containers that remember `file` per key."""
    if isinstance(value, Mapping):
        table = _Table()
        for k, v in value.items():
            # Null means "not set": PgDoorman drops nulls before reading the config, and so do we.
            if v is None:
                continue
            table[k] = _tag(v, file)
            table.origin[k] = file
        return table
    if isinstance(value, list | tuple):
        array = _Array()
        array.extend(_tag(v, file) for v in value)
        array.origins = [file] * len(array)
        return array
    return value


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"the value {show(value)}"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(path: list[PathSeg] | tuple[PathSeg, ...]) -> str:
    """Key path as shown in messages: `pools.app.users[0].pool_size`; odd names are quoted."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            text = seg if _BARE_KEY.match(seg) else json.dumps(seg, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def _parse_toml(text: str, file: str, errors: list[str]) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        errors.append(f"{file}: TOML syntax error: {e}")
    return None


def _read(file: str, errors: list[str], included_from: str | None = None) -> _Table | None:
    suffix = f" (included from {included_from})" if included_from else ""
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        errors.append(f"{file}: cannot read config file{suffix}: {e.strerror or e}")
        return None
    except UnicodeDecodeError as e:
        errors.append(f"{file}: config file is not valid UTF-8{suffix}: {e.reason} at byte {e.start}")
        return None
    bad = len(errors)
    data = parse_yaml(text, file, errors) if is_yaml_path(file) else _parse_toml(text, file, errors)
    if len(errors) > bad:
        return None
    if data is None:  # an empty YAML document
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{file}: the top level must be a table of sections, got {_kind(data)}")
        return None
    result = _tag(data, file)
    assert isinstance(result, _Table)
    return result


# ---------------------------------------------------------------------------------------------------
# include.files and merging
# ---------------------------------------------------------------------------------------------------


def _merge(dst: _Table, src: _Table, path: list[PathSeg], errors: list[str]) -> None:
    """Merge `src` over `dst`: tables key by key, lists concatenated (PgDoorman's merge does the
    same, so users of one pool may be split across files), other values replaced."""
    for key, value in src.items():
        src_file = src.origin[key]
        if key not in dst:
            dst[key] = value
            dst.origin[key] = src_file
            continue
        old = dst[key]
        if isinstance(old, _Table) and isinstance(value, _Table):
            _merge(old, value, [*path, key], errors)
        elif isinstance(old, _Array) and isinstance(value, _Array):
            old.extend(value)
            old.origins.extend(value.origins)
        elif isinstance(old, _Table | _Array) or isinstance(value, _Table | _Array):
            errors.append(
                f"{src_file}: {format_path([*path, key])}: cannot merge {_kind(value)} "
                f"over {_kind(old)} from {dst.origin[key]}"
            )
            continue
        else:
            dst[key] = value
        dst.origin[key] = src_file


def _include_files(include: Any, file: str, errors: list[str]) -> list[str]:
    if include is None:
        return []
    if not isinstance(include, _Table):
        errors.append(f"{file}: include: must be a table with a `files` list, got {_kind(include)}")
        return []
    files: list[str] = []
    for key, value in include.items():
        if key != "files":
            errors.append(f"{file}: include.{key}: {_unknown_key_message('include', str(key))}")
            continue
        try:
            files = list(field("include", "files").type.parse(value))
        except Invalid as e:
            errors.append(f"{file}: include.files: {e}, got {show(value)}")
    return files


def _load_tree(file: str, chain: list[tuple[str, str]], errors: list[str], included_from: str | None) -> _Table | None:
    """Read `file` and merge its include files (recursively) over it."""
    data = _read(file, errors, included_from)
    if data is None:
        return None
    include = data.pop("include", None)
    data.origin.pop("include", None)
    for i, name in enumerate(_include_files(include, file, errors)):
        target = os.path.normpath(os.path.join(os.path.dirname(file), os.path.expanduser(name)))
        real = os.path.realpath(target)
        if any(real == seen for seen, _ in chain):
            cycle = " -> ".join([shown for _, shown in chain] + [target])
            errors.append(f"{file}: include.files[{i}]: include cycle: {cycle}")
            continue
        sub = _load_tree(target, [*chain, (real, target)], errors, file)
        if sub is not None:
            _merge(data, sub, [], errors)
    return data


# ---------------------------------------------------------------------------------------------------
# Validation against the field table
# ---------------------------------------------------------------------------------------------------


# The one info line about settings that do not apply (Field.applies False), after their key paths.
INAPPLICABLE_NOTE = ("do not apply to pgdoorman (settings of PgDoorman's tokio runtime; pgdoorman's workers are "
                     "threads with one event loop each, see general.worker_threads): checked and ignored")


class _Ctx:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.inapplicable: list[str] = []  # "file: key.path" of settings that do not apply (fields.applies)
        self.origins: dict[KeyPath, Origin] = {}

    def remember(self, at: KeyPath, file: str, path: list[PathSeg], files: dict[str, str]) -> None:
        """Record where the table at `at` (shown as `path`) and each of its keys (`files`) came from."""
        self.origins[at] = Origin(file, format_path(path))
        for key, kfile in files.items():
            self.origins[(*at, key)] = Origin(kfile, format_path([*path, key]))

    def error(self, file: str, path: list[PathSeg], message: str) -> None:
        self.errors.append(f"{file}: {format_path(path)}: {message}")

    def warn(self, file: str, path: list[PathSeg], message: str) -> None:
        self.warnings.append(f"{file}: {format_path(path)}: {message}")


def _unknown_key_message(section: str, key: str) -> str:
    message = f"unknown key {json.dumps(key, ensure_ascii=False)}"
    candidates = [f.key for f in fields_of(section)] if section != "top" else list(TOP_LEVEL_KEYS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.7)
    if close:
        return f'{message}; did you mean "{close[0]}"?'
    if section != "top" and key in TOP_LEVEL_KEYS:
        return f"{message}; {key} is a top-level section"
    elsewhere = sorted({SECTIONS[f.section].path for f in FIELDS if f.section != section and key in (f.key, *f.aliases)})
    if elsewhere:
        return f"{message}; {key} is a setting of {' and '.join(elsewhere)}"
    return message


class _Sub:
    """A subsection value (users, auth_query) found while walking a section."""

    def __init__(self, raw: Any, file: str, path: list[PathSeg]) -> None:
        self.raw = raw
        self.file = file
        self.path = path


def _walk_section(
    ctx: _Ctx, section: str, table: _Table, file: str, path: list[PathSeg]
) -> tuple[dict[str, Any], dict[str, _Sub], dict[str, str]]:
    """Check every key of `table` against `section`'s fields. Returns the parsed values of the
    implemented settings present, the subsections present, and each present key's file."""
    values: dict[str, Any] = {}
    subs: dict[str, _Sub] = {}
    files: dict[str, str] = {}
    written: dict[str, str] = {}
    for key, raw in table.items():
        kfile = table.origin.get(key, file)
        kpath: list[PathSeg] = [*path, str(key)]
        if not isinstance(key, str):
            ctx.error(kfile, kpath, "keys must be strings")
            continue
        f = lookup(section, key)
        if f is None:
            ctx.error(kfile, kpath, _unknown_key_message(section, key))
            continue
        if f.key in written:
            ctx.error(kfile, kpath, f'given twice: also as "{written[f.key]}"')
            continue
        written[f.key] = key
        files[f.key] = kfile
        if key != f.key:
            ctx.warn(kfile, kpath, f'deprecated name; use "{f.key}"')
        if isinstance(f.type, Subsection):
            subs[f.key] = _Sub(raw, kfile, kpath)
            continue
        if not f.implemented:
            ctx.warn(kfile, kpath, NOT_IMPLEMENTED_WARNING)
            continue
        try:
            values[f.key] = f.type.parse(raw)
        except Invalid as e:
            got = "" if f.secret else f", got {show(raw)}"
            ctx.error(kfile, kpath, f"{e}{got}")
            continue
        if not f.applies:
            ctx.inapplicable.append(f"{kfile}: {format_path(kpath)}")
        elif f.unhonoured is not None and values[f.key] == f.unhonoured[0]:
            ctx.warn(kfile, kpath, f.unhonoured[1])  # a value pgdoorman does not follow, and says why
    for f in fields_of(section):
        if f.required and f.implemented and f.key not in written:
            ctx.error(file, [*path, f.key], "is required")
    return values, subs, files


def _as_table(ctx: _Ctx, raw: Any, file: str, path: list[PathSeg]) -> _Table | None:
    if isinstance(raw, _Table):
        return raw
    ctx.error(file, path, f"must be a table, got {_kind(raw)}")
    return None


def _iter_users(ctx: _Ctx, sub: _Sub) -> Iterator[tuple[Any, str, list[PathSeg]]]:
    """The entries of a pool's `users`: a list, or the legacy TOML map with numeric keys."""
    raw = sub.raw
    if isinstance(raw, _Array):
        for i, item in enumerate(raw):
            yield item, raw.origins[i], [*sub.path, i]
        return
    if isinstance(raw, _Table):
        numbered: list[tuple[int, Any]] = []
        for key in raw:
            text = str(key)
            if isinstance(key, bool) or not (text.isascii() and text.isdigit()):
                ctx.error(raw.origin.get(key, sub.file), [*sub.path, text], "keys of the users map must be numbers")
                continue
            numbered.append((int(text), key))
        for _, key in sorted(numbered):
            yield raw[key], raw.origin.get(key, sub.file), [*sub.path, str(key)]
        return
    ctx.error(sub.file, sub.path, f"must be a list of user tables (or a table with numeric keys), got {_kind(raw)}")


def _walk_users(ctx: _Ctx, sub: _Sub, at: KeyPath) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = []
    first_seen: dict[str, list[PathSeg]] = {}
    for raw, file, path in _iter_users(ctx, sub):
        table = _as_table(ctx, raw, file, path)
        if table is None:
            continue
        values, _, files = _walk_section(ctx, "user", table, file, path)
        name = values.get("username")
        if name is not None:
            if name in first_seen:
                ctx.error(
                    files["username"],
                    [*path, "username"],
                    f"duplicate username {show(name)} (also at {format_path(first_seen[name])})",
                )
            else:
                first_seen[name] = path
        size, minimum = values.get("pool_size"), values.get("min_pool_size")
        if size is not None and minimum is not None and minimum > size:
            ctx.error(files["min_pool_size"], [*path, "min_pool_size"], f"must be <= pool_size ({size}), got {minimum}")
        if "server_password" in files and "server_username" not in files:
            ctx.error(files["server_password"], [*path, "server_password"], "requires server_username")
        if _complete("user", values):  # else reported as required and left out, so the Config can be built
            ctx.remember((*at, len(users)), file, path, files)
            users.append(values)
    return users


def _complete(section: str, values: dict[str, Any]) -> bool:
    return all(f.key in values for f in fields_of(section) if f.required and f.implemented)


class _PoolSpec:
    def __init__(self, name: str, values: dict[str, Any], users: list[dict[str, Any]], aq: dict[str, Any] | None,
                 files: dict[str, str] | None = None):
        self.name = name
        self.files = files or {}
        self.values = values
        self.users = users
        self.auth_query = aq


def _walk_pool(ctx: _Ctx, name: str, table: _Table, file: str, path: list[PathSeg]) -> _PoolSpec:
    values, subs, files = _walk_section(ctx, "pool", table, file, path)
    ctx.remember(("pools", name), file, path, files)
    users = _walk_users(ctx, subs["users"], ("pools", name, "users")) if "users" in subs else []
    auth_query: dict[str, Any] | None = None
    if "auth_query" in subs:
        sub = subs["auth_query"]
        aq_table = _as_table(ctx, sub.raw, sub.file, sub.path)
        if aq_table is not None:
            aq_values, _, aq_files = _walk_section(ctx, "auth_query", aq_table, sub.file, sub.path)
            if "server_password" in aq_files and "server_user" not in aq_files:
                ctx.error(aq_files["server_password"], [*sub.path, "server_password"], "requires server_user")
            if field("pool", "auth_query").implemented and _complete("auth_query", aq_values):
                auth_query = aq_values
    return _PoolSpec(name, values, users, auth_query, files)


def _check_general(ctx: _Ctx, values: dict[str, Any], files: dict[str, str]) -> None:
    enabled = values.get("prepared_statements", field("general", "prepared_statements").default)
    size = values.get("prepared_statements_cache_size")
    if enabled and size == 0:
        ctx.error(files["prepared_statements_cache_size"], ["general", "prepared_statements_cache_size"],
                  "must be >= 1 while prepared_statements is true, got 0")
    if values.get("hba") and values.get("pg_hba") is not None:
        ctx.error(files["hba"], ["general", "hba"], "cannot be combined with pg_hba: keep one of them")
    _check_sockets(ctx, values, files)
    if values.get("client_anonymous_prepared_cache_size") == 0:
        ctx.warn(
            files["client_anonymous_prepared_cache_size"],
            ["general", "client_anonymous_prepared_cache_size"],
            "0 means no limit on the unnamed prepared statements a client may leave behind",
        )


def _check_sockets(ctx: _Ctx, values: dict[str, Any], files: dict[str, str]) -> None:
    rate = values.get("tls_rate_limit_per_second", 0)
    if rate and (rate < 100 or rate % 100):
        ctx.error(files["tls_rate_limit_per_second"], ["general", "tls_rate_limit_per_second"],
                  f"must be 0 or a multiple of 100 (100, 200, ...), got {rate}")
    size = values.get("tcp_socket_buffer_size", 0)
    if 0 < size < 65536:
        ctx.warn(files["tcp_socket_buffer_size"], ["general", "tcp_socket_buffer_size"],
                 f"{size} bytes turns TCP buffer autotuning off with a very small buffer: large results, COPY "
                 "and distant clients slow down; use at least 64 KiB unless measurements say otherwise")


def _pool_name(ctx: _Ctx, key: Any, file: str) -> str | None:
    if isinstance(key, bool) or not isinstance(key, str | int):
        ctx.error(file, ["pools", str(key)], "pool names must be strings")
        return None
    name = str(key)  # YAML reads `5432:` as a number; a pool name is text either way
    if not name:
        ctx.error(file, ["pools", name], "pool name must not be empty")
        return None
    return name


class _Root:
    """The merged document being built: its top-level sections and the main file they default to."""

    def __init__(self, ctx: _Ctx, root: _Table, main_file: str) -> None:
        self.ctx = ctx
        self.root = root
        self.main_file = main_file

    def file_of(self, key: str) -> str:
        return self.root.origin.get(key, self.main_file)

    def section(self, key: str) -> tuple[_Table, str] | None:
        """The table of section `key` and its file; None when absent or not a table (reported)."""
        if key not in self.root:
            return None
        file = self.file_of(key)
        table = _as_table(self.ctx, self.root[key], file, [key])
        return (table, file) if table is not None else None


def _build_general(doc: _Root) -> dict[str, Any]:
    src = doc.section("general")
    if src is None and "general" not in doc.root:
        src = (_Table(), doc.main_file)
    if src is None:
        return {}
    values, _, files = _walk_section(doc.ctx, "general", src[0], src[1], ["general"])
    doc.ctx.remember(("general",), src[1], ["general"], files)
    _check_general(doc.ctx, values, files)
    return values


def _build_web(doc: _Root, general: dict[str, Any]) -> dict[str, Any]:
    ctx = doc.ctx
    if "web" in doc.root and "prometheus" in doc.root:
        ctx.error(doc.file_of("prometheus"), ["prometheus"],
                  'both "web" and its old name "prometheus" are given; keep only "web"')
    web_key = "web" if "web" in doc.root else "prometheus"
    src = doc.section(web_key)
    if src is None:
        return {}
    values, _, files = _walk_section(ctx, "web", src[0], src[1], [web_key])
    doc.ctx.remember(("web",), src[1], [web_key], files)
    for i, net in enumerate(values.get("trusted_proxies") or ()):
        try:
            ipaddress.ip_network(str(net).strip(), strict=False)
        except ValueError:
            ctx.error(files.get("trusted_proxies", src[1]), [web_key, "trusted_proxies", str(i)],
                      f"{net!r} is not a network: use CIDR notation (10.0.0.0/8, 192.0.2.7/32, fd00::/8)")
    if values.get("sso_enabled") and not values.get("sso_public_key_file"):
        ctx.error(files.get("sso_enabled", src[1]), [web_key, "sso_enabled"],
                  "needs web.sso_public_key_file (the RSA public key, PEM, that signs the tokens)")
    if values.get("ui"):
        password = general.get("admin_password", field("general", "admin_password").default)
        if password in ("", "admin"):
            ctx.error(
                files.get("ui", src[1]),
                [web_key, "ui"],
                "cannot be turned on while general.admin_password is "
                + ("empty" if password == "" else 'the default "admin"')
                + ": the web API's Admin role signs in with it; set a strong admin_password first",
            )
    return values


def _build_talos(doc: _Root) -> dict[str, Any]:
    src = doc.section("talos")
    if src is None:
        return {}
    values, _, files = _walk_section(doc.ctx, "talos", src[0], src[1], ["talos"])
    doc.ctx.remember(("talos",), src[1], ["talos"], files)
    return values


def _build_pools(doc: _Root) -> dict[str, PoolConfig]:
    ctx = doc.ctx
    if "pools" not in doc.root or doc.root["pools"] == {}:
        ctx.warn(doc.file_of("pools"), ["pools"], "no pools configured; only the admin console can be reached")
    src = doc.section("pools")
    specs: list[_PoolSpec] = []
    if src is not None:
        pools_table, pools_file = src
        for key, raw in pools_table.items():
            file = pools_table.origin.get(key, pools_file)
            name = _pool_name(ctx, key, file)
            if name is None:
                continue
            table = _as_table(ctx, raw, file, ["pools", name])
            if table is not None:
                specs.append(_walk_pool(ctx, name, table, file, ["pools", name]))
    return {
        spec.name: PoolConfig(
            name=spec.name,
            **spec.values,
            users=tuple(UserConfig(**u) for u in spec.users),
            auth_query=AuthQueryConfig(**spec.auth_query) if spec.auth_query is not None else None,
        )
        for spec in specs
    }


def _check_startup_packets(ctx: _Ctx, general: Mapping[str, str], pools: dict[str, PoolConfig]) -> None:
    """general.startup_parameters with a pool's over them must fit, with each of its users' user, database and
    application_name, in PostgreSQL's 10,000-byte startup packet (checked per level by the value type)."""
    for name, pool in pools.items():
        merged = {**general, **pool.startup_parameters}
        users = [u.server_username or u.username for u in pool.users] or ["x" * 63]  # auth_query: the longest
        worst = max(users, key=lambda u: len(u.encode()))
        app_name = pool.application_name or "pg_doorman"
        total = 9 + startup_size({"user": worst, "database": pool.server_database, "application_name": app_name})
        total += startup_size(merged)
        if merged and total > 10000:
            origin = ctx.origins.get(("pools", name, "startup_parameters")) or ctx.origins.get(("pools", name))
            ctx.error(origin.file if origin is not None else "", ["pools", name, "startup_parameters"],
                      f"with general.startup_parameters the startup packet of user {worst!r} would take {total} "
                      "bytes; PostgreSQL refuses more than 10000")


def _build(root: _Table, main_file: str) -> tuple[Config, list[str]]:
    """The Config of a merged document and the problems found. With problems, the Config holds what was
    valid (defaults elsewhere), so the files it names can still be checked and every problem reported."""
    ctx = _Ctx()
    for key in root:
        if key not in TOP_LEVEL_KEYS:
            ctx.error(root.origin.get(key, main_file), [str(key)], _unknown_key_message("top", str(key)))
    doc = _Root(ctx, root, main_file)
    general_values = _build_general(doc)
    web_values = _build_web(doc, general_values)
    talos_values = _build_talos(doc)
    pools = _build_pools(doc)
    _check_startup_packets(ctx, general_values.get("startup_parameters", {}), pools)
    check_coordinators(ctx, general_values, pools)
    config = Config(
        path=main_file,
        general=General(**general_values),
        web=WebConfig(**web_values),
        pools=FrozenMapping(pools),
        warnings=tuple(ctx.warnings),
        notes=(f"{', '.join(ctx.inapplicable)}: {INAPPLICABLE_NOTE}",) if ctx.inapplicable else (),
        talos=TalosConfig(**talos_values),
        origins=FrozenMapping(ctx.origins),
    )
    return config, ctx.errors


# ---------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------


def read_config(path: str) -> tuple[Config | None, list[str]]:
    """Load, merge and validate the config at `path` without raising: the Config and every problem found.
    The Config is None when a file could not be read or parsed; with problems it holds only what was valid
    (for pgdoorman.resources to report the files it names as well: one message with every problem)."""
    errors: list[str] = []
    root = _load_tree(path, [(os.path.realpath(path), path)], errors, None)
    if root is None or errors:
        return None, errors
    return _build(root, path)


def load_config(path: str) -> Config:
    """Load, merge and validate the config at `path`. Raises ConfigError listing every problem. The files
    it names are not read here: pgdoorman.resources.load does both."""
    config, errors = read_config(path)
    if config is None or errors:
        raise ConfigError(errors)
    return config


def config_from_dict(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """Validate an in-memory config (as it would be read from a file) into a Config. `path` is used
    in messages only. `include` is not allowed here: there is no file to resolve it against."""
    root = _tag(data, path)
    assert isinstance(root, _Table)
    if "include" in root:
        raise ConfigError([f"{path}: include: include files are only supported when loading a file"])
    config, errors = _build(root, path)
    if errors:
        raise ConfigError(errors)
    return config
