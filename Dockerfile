# The image of the compose services `worker`, `tail` and `gateway`: the journal package, its
# CLI and the HTTP extra (`journal serve`).
# It holds no redis-server: in compose, Redis is its own service (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# .dockerignore keeps the venv, caches, journal data and .git out of the context.
COPY . .
RUN pip install ".[http]" \
    && useradd --system --uid 10001 --no-create-home --home-dir /data journal \
    && mkdir -p /data \
    && chown journal:journal /data

# A named volume mounted on /data starts as a copy of this directory, owner included, so the
# unprivileged user can write the journal there.
USER journal
WORKDIR /data
ENV JOURNAL_ROOT=/data

ENTRYPOINT ["journal"]
CMD ["--help"]
