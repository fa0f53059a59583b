# One image for every role of the platform and for the example worker.
#
#   docker build -t connect .
#   docker run --rm -p 8288:8288 -p 8289:8289 \
#     -e CONNECT_SIGNING_KEY=signkey-prod-$(openssl rand -hex 32) -e CONNECT_EVENT_KEYS=$(openssl rand -hex 16) connect
#
# The role is chosen by flag: the default command is the whole platform in one
# process on SQLite (`--role all`); the split roles share a PostgreSQL database:
#   connect serve --role api      --database-url postgresql://...
#   connect serve --role gateway  --database-url postgresql://... --gateway-url ws://<address workers dial>:8289/v0/connect
#   connect serve --role executor --database-url postgresql://...
#   connect worker examples.hello:client
# See docker-compose.yml and examples/k8s/.

# The build stage installs the package and its dependencies (no test or bench
# extras) into a virtual environment; the final image copies only that, so no
# pip cache or build files ship. Every dependency has a wheel for CPython 3.12
# on manylinux (uvloop, httptools, asyncpg, msgspec, protobuf), so no compiler.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/connect
COPY pyproject.toml README.md /src/
COPY protocol /src/protocol
COPY connect /src/connect
RUN /opt/connect/bin/pip install /src

FROM python:3.12-slim
ENV PATH=/opt/connect/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/connect /opt/connect
# `connect worker examples.hello:client` imports the example app from
# /app (PYTHONPATH). An image of your own workers copies its code the same way.
COPY examples /app/examples
# Non-root. The working directory /data holds the SQLite file of `--role all`
# (connect.db, relative to it); the split roles keep nothing on disk. Not
# CONNECT_DB: the CLI refuses a SQLite file and --database-url together.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin connect \
    && mkdir /data && chown connect /data
USER 10001
WORKDIR /data
VOLUME ["/data"]
# 8288: HTTP API (events, /v0/connect/start and /flush, REST, /health, /ready).
# 8289: the gateway workers' WebSockets dial (/v0/connect; /ready, 503 while draining).
EXPOSE 8288 8289
# SIGTERM starts the drains (the gateway's: --drain-timeout, 25 s by default;
# a worker's: --drain-timeout, 600 s by default): give containers a stop
# timeout longer than those (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["connect"]
# 0.0.0.0: in a container 127.0.0.1 would be reachable from nowhere else.
CMD ["serve", "--role", "all", "--host", "0.0.0.0"]
