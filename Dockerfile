# The rpcache worker image used by docker-compose.yml (`rpcache worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
COPY schemas ./schemas
RUN pip install . \
    && useradd --system --create-home --uid 10001 rpcache \
    && install -d -o rpcache -g rpcache /var/lib/rpcache

# Faust's data directory (WORKER_DATA_DIR; created with its parents at start).
ENV WORKER_DATA_DIR=/var/lib/rpcache/worker
WORKDIR /var/lib/rpcache
USER rpcache
EXPOSE 6066
CMD ["rpcache", "worker"]
