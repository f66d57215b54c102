#!/bin/sh
# Container entry point (Dockerfile): runs `pg_doorman $CONFIG_FILE`. When that file does not exist
# (nothing mounted), writes one from the environment first:
#   PG_DOORMAN_ADMIN_PASSWORD   admin console password (required in that case); PG_DOORMAN_ADMIN_USER (admin)
#   PG_DOORMAN_PORT (6432), PG_DOORMAN_POOL_MODE (transaction), PG_DOORMAN_POOL_SIZE (20)
#   PG_DOORMAN_SERVER_HOST, PG_DOORMAN_SERVER_PORT (5432)
#   PG_DOORMAN_DATABASES        space-separated database names, one pool each
#   PG_DOORMAN_USERS            space-separated user=secret pairs (secret: md5 hash, SCRAM verifier or
#                               plain text), members of every pool
# Any other arguments are passed to pg_doorman (e.g. `-l debug`).
set -eu
cfg=${CONFIG_FILE:-/etc/pg_doorman/pg_doorman.yaml}
if [ "${1:-}" = pg_doorman ]; then shift; fi
if [ ! -e "$cfg" ]; then
	: "${PG_DOORMAN_ADMIN_PASSWORD:?no $cfg mounted: set PG_DOORMAN_ADMIN_PASSWORD (and PG_DOORMAN_SERVER_HOST, PG_DOORMAN_DATABASES, PG_DOORMAN_USERS)}"
	q() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
	{
		echo "general:"
		echo "  host: \"0.0.0.0\""
		echo "  port: ${PG_DOORMAN_PORT:-6432}"
		echo "  admin_username: $(q "${PG_DOORMAN_ADMIN_USER:-admin}")"
		echo "  admin_password: $(q "$PG_DOORMAN_ADMIN_PASSWORD")"
		echo "web:"
		echo "  enabled: true"
		echo "  host: \"0.0.0.0\""
		echo "  port: 9127"
		if [ -z "${PG_DOORMAN_DATABASES:-}" ]; then
			echo "pools: {}"
		else
			echo "pools:"
			for db in $PG_DOORMAN_DATABASES; do
				echo "  $(q "$db"):"
				echo "    server_host: $(q "${PG_DOORMAN_SERVER_HOST:?set PG_DOORMAN_SERVER_HOST}")"
				echo "    server_port: ${PG_DOORMAN_SERVER_PORT:-5432}"
				echo "    pool_mode: $(q "${PG_DOORMAN_POOL_MODE:-transaction}")"
				echo "    users:"
				for pair in ${PG_DOORMAN_USERS:-}; do
					echo "      - username: $(q "${pair%%=*}")"
					echo "        password: $(q "${pair#*=}")"
					echo "        pool_size: ${PG_DOORMAN_POOL_SIZE:-20}"
				done
				[ -n "${PG_DOORMAN_USERS:-}" ] || echo "      []"
			done
		fi
	} > "${TMPDIR:-/tmp}/pg_doorman.yaml"
	chmod 600 "${TMPDIR:-/tmp}/pg_doorman.yaml"
	cfg=${TMPDIR:-/tmp}/pg_doorman.yaml
fi
pg_doorman -t "$cfg" >/dev/null
exec pg_doorman "$@" "$cfg"
