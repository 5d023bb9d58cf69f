# The gpuledger image: collector, stream consumer and scheduler (docker-compose.yml runs one
# service per container from it). Build from the repository root: docker build -t gpuledger .
# With no command it runs the collector (deploy/docker/entrypoint.sh); `consume`, `schedule`
# or any other gpuledger command runs that command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GPULEDGER_DATA_DIR=/data \
    GPULEDGER_REGISTRY=/etc/gpuledger/registry.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gpuledger ./gpuledger
COPY collectors ./collectors
COPY streams ./streams
COPY storage ./storage
COPY accounting ./accounting
COPY examples ./examples
RUN pip install '.[server]' \
    && useradd --system --uid 10001 --home-dir /data gpuledger \
    && mkdir -p /data /etc/gpuledger \
    && chown gpuledger /data
COPY examples/registry.toml /etc/gpuledger/registry.toml
COPY deploy/docker/entrypoint.sh deploy/docker/collector-entrypoint.sh /usr/local/bin/

USER gpuledger
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
