# syntax=docker/dockerfile:1
#
# The vitals image: one stream worker per container (default command), or any
# other `vitals` sub-command (e.g. `simulate`, `replay`, `scorecard check`).
#
#   docker build -t vitals:local .
#   docker run --rm -p 6066:6066 -e VITALS_BOOTSTRAP_SERVERS=broker:9092 vitals:local
#   docker run --rm vitals:local scorecard check /path/to/scorecard.yaml
#
# Configuration is the VITALS_* environment of service/runtime/settings.py (see
# docs/operations.md). The process runs as the unprivileged user `vitals`
# (uid 10001) with /var/lib/vitals as its working and data directory.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/vitals
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when
# pyproject.toml changes, not on every code change.
COPY pyproject.toml README.md ./
RUN mkdir -p service streams schemas \
    && touch service/__init__.py streams/__init__.py schemas/__init__.py \
    && /opt/vitals/bin/pip install --quiet . \
    && /opt/vitals/bin/pip uninstall --quiet --yes vitals \
    && rm -rf service streams schemas build ./*.egg-info

COPY schemas/ schemas/
COPY service/ service/
COPY streams/ streams/
RUN /opt/vitals/bin/pip install --quiet --no-deps . \
    && /opt/vitals/bin/vitals --version

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="vitals" \
      org.opencontainers.image.description="Real-time customer health scores on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 vitals \
    && useradd --system --uid 10001 --gid vitals --home-dir /var/lib/vitals \
       --create-home --shell /usr/sbin/nologin vitals

COPY --from=build /opt/vitals /opt/vitals

# VITALS_WEB_HOST=0.0.0.0: reachable from outside the container.
ENV PATH=/opt/vitals/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VITALS_WEB_HOST=0.0.0.0 \
    VITALS_WEB_PORT=6066 \
    VITALS_DATA_DIR=/var/lib/vitals/worker

WORKDIR /var/lib/vitals
USER 10001:10001
EXPOSE 6066

ENTRYPOINT ["vitals"]
CMD ["worker"]
