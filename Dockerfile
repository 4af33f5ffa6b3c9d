# syntax=docker/dockerfile:1
# The nudge image: the `nudge` console script (worker, collector, topics, ...).
#   docker build -t nudge:local .      (docker compose builds it for you)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The source is bind-mounted for the install only (rw: setuptools writes build/ there,
# and the writes are discarded), so no copy of it stays in a layer. constraints.txt
# pins every dependency to what the test suite ran against.
RUN --mount=type=bind,source=.,target=/src,rw \
    cd /src && pip install -c constraints.txt .

# Non-root; /var/lib/nudge holds worker state (NUDGE_DATA_DIR) and is a volume in compose.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/nudge --create-home nudge
USER nudge
WORKDIR /var/lib/nudge
ENV NUDGE_DATA_DIR=/var/lib/nudge

ENTRYPOINT ["nudge"]
CMD ["--help"]
