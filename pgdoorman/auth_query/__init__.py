"""auth_query: users looked up in PostgreSQL at login instead of being listed in the config
(PgDoorman's `pools.<name>.auth_query`). `executor.py` runs the query, `service.py` caches and coalesces
lookups on executor threads, `pools.py` makes and collects the users' pools. See docs/auth-query.md.
"""

from pgdoorman.auth_query.pools import DynamicPools
from pgdoorman.auth_query.service import AuthQueryService, Lookup, Stats

__all__ = ["AuthQueryService", "DynamicPools", "Lookup", "Stats"]
