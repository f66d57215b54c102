"""pgdoorman: a PostgreSQL connection pooler compatible with PgDoorman's configuration and behaviour."""

__version__ = "0.1.0"
