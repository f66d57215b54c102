"""Configuration: loading PgDoorman-compatible YAML/TOML files into frozen dataclasses, the field
table they are validated against, and the reference config / docs generated from that table."""

from pgdoorman.config.diff import Change, config_changes, diff_configs, restart_required
from pgdoorman.config.fields import FIELDS, Field
from pgdoorman.config.loader import ConfigError, config_format_for, config_from_dict, load_config, read_config
from pgdoorman.config.model import (
    AuthQueryConfig,
    Config,
    General,
    Origin,
    PoolConfig,
    TalosConfig,
    UserConfig,
    WebConfig,
)
from pgdoorman.config.render import render_config, render_docs, render_reference
from pgdoorman.config.values import (
    HbaSource,
    Invalid,
    ScramVerifier,
    parse_byte_size,
    parse_duration,
    parse_scram_verifier,
    password_kind,
)

__all__ = [
    "FIELDS",
    "AuthQueryConfig",
    "Change",
    "Config",
    "ConfigError",
    "Field",
    "General",
    "HbaSource",
    "Invalid",
    "Origin",
    "PoolConfig",
    "ScramVerifier",
    "TalosConfig",
    "UserConfig",
    "WebConfig",
    "config_changes",
    "config_format_for",
    "config_from_dict",
    "diff_configs",
    "load_config",
    "parse_byte_size",
    "parse_duration",
    "parse_scram_verifier",
    "read_config",
    "password_kind",
    "render_config",
    "render_docs",
    "render_reference",
    "restart_required",
]
