# pgdoorman container image (docs/install.md, "Container image").
#
#   docker build -t pgdoorman .
#   docker run -d --name pgdoorman -p 6432:6432 -p 9127:9127 \
#       -v /srv/pg_doorman/pg_doorman.yaml:/etc/pg_doorman/pg_doorman.yaml:ro pgdoorman
#
# Config: a mounted /etc/pg_doorman/pg_doorman.yaml (or any path given as CONFIG_FILE), or, with no file
# there, one written at start from PG_DOORMAN_* environment variables (docker-entrypoint.sh).
# The HEALTHCHECK polls /metrics, so keep `web.enabled: true` (and web.port 9127) in a mounted config.
#
# Debian's python3 and python3-yaml on debian:bookworm-slim, so that scripts/build_rootfs.py can build the
# same root filesystem from this file with debootstrap where no container engine runs (the tests do).

# ---- build stage: pgdoorman from this checkout, installed into a venv that sees Debian's PyYAML
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-setuptools python3-wheel \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pgdoorman ./pgdoorman
RUN python3 -m venv --system-site-packages /opt/pgdoorman \
    && /opt/pgdoorman/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation . \
    && /opt/pgdoorman/bin/pip uninstall -y -q pip

# ---- runtime stage: Debian's python3 and python3-yaml, the venv, a non-root user
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-yaml \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system pg_doorman && useradd --system --gid pg_doorman --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pg_doorman \
    && install -d -o pg_doorman -g pg_doorman -m 0755 /etc/pg_doorman /run/pg_doorman
COPY --from=build /opt/pgdoorman /opt/pgdoorman
COPY contrib/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER pg_doorman
ENV PATH=/opt/pgdoorman/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CONFIG_FILE=/etc/pg_doorman/pg_doorman.yaml \
    PYTHONUNBUFFERED=1
EXPOSE 6432 9127
# SIGINT without a terminal means "binary upgrade" to pg_doorman: stop with SIGTERM (graceful drain).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9127/metrics', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["pg_doorman"]
