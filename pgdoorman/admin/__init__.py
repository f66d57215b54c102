"""The admin console (virtual database `pgdoorman`/`pgbouncer`): SHOW, PAUSE/RESUME/RECONNECT, KILL,
RELOAD, SHUTDOWN and SET log_level, plus the read-only state views the metrics share."""
