# pgdoorman container image (docs/install.md, "Container image").
#
#   docker build -t pgdoorman .
#   docker run -d --name pgdoorman -p 6432:6432 -p 9127:9127 \
#       -v /srv/pg_doorman/pg_doorman.yaml:/etc/pg_doorman/pg_doorman.yaml:ro pgdoorman
#
# Config: a mounted /etc/pg_doorman/pg_doorman.yaml (or any path given as CONFIG_FILE), or, with no file
# there, one written at start from PG_DOORMAN_* environment variables (docker-entrypoint.sh).
# The HEALTHCHECK polls /metrics, so keep `web.enabled: true` (and web.port 9127) in a mounted config.

# ---- build stage: a wheel of pgdoorman (and PyYAML's) from this checkout
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pgdoorman ./pgdoorman
RUN pip wheel --no-cache-dir --wheel-dir /wheels . "PyYAML>=6"

# ---- runtime stage: the interpreter, the wheels, a non-root user
FROM python:3.12-slim-bookworm
RUN groupadd --system pg_doorman && useradd --system --gid pg_doorman --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pg_doorman \
    && install -d -o pg_doorman -g pg_doorman -m 0755 /etc/pg_doorman /run/pg_doorman
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels pgdoorman && rm -rf /wheels
COPY contrib/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER pg_doorman
ENV CONFIG_FILE=/etc/pg_doorman/pg_doorman.yaml \
    PYTHONUNBUFFERED=1
EXPOSE 6432 9127
# SIGINT without a terminal means "binary upgrade" to pg_doorman: stop with SIGTERM (graceful drain).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9127/metrics', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["pg_doorman"]
