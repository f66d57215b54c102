"""`python -m pgdoorman` runs the same entry point as the `pg_doorman` console script."""

from pgdoorman.cli import main

raise SystemExit(main())
