"""patroni_proxy: PgDoorman's companion L4 proxy for Patroni clusters. Each configured port forwards TCP
connections to a cluster member whose Patroni role the port accepts (leader / sync / async / any), by
least connections, and disconnects the clients of a member that stops being eligible.

Modules: `config` (YAML schema and validation), `patroni` (/cluster parsing, eligibility, poller thread),
`relay` (one proxied connection), `proxy` (ports, clusters, HTTP API, reload), `cli` (the command).
"""

from __future__ import annotations

from pgdoorman.patroni_proxy.cli import main

__all__ = ["main"]
