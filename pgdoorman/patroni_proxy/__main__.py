"""`python -m pgdoorman.patroni_proxy` runs the patroni_proxy command."""

from __future__ import annotations

from pgdoorman.patroni_proxy.cli import main

raise SystemExit(main())
