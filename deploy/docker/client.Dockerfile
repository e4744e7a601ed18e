# dblocks company side: `dbclient join` on Flower's SuperNode image.
# Build from the repository root:  docker build -f deploy/docker/client.Dockerfile -t dblocks-client .
# The entry point is `dbclient join`, never plain `flower-supernode`: dbclient validates the data first and
# runs the SuperNode with dblocks' app guard (only the installed dblocks ClientApp may run).
# It opens no port: the SuperNode connects out to the operator's Fleet gateway.
ARG FLWR_VERSION=1.41.0
FROM flwr/supernode:${FLWR_VERSION}

ARG TORCH_INDEX_URL=""
ARG TORCH_VERSION=2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY server/ server/
COPY client/ client/
COPY privacy/ privacy/
# DL3013: "." is this repository, whose pyproject.toml pins every dependency
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
    && python -m pip install --no-cache-dir .

ENV DBLOCKS_HOME=/data \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
# /data: node key, privacy ledger, Flower state (keep it: the ledger is what enforces the privacy budget)
VOLUME ["/data"]
ENTRYPOINT ["dbclient"]
CMD ["join", "--help"]
