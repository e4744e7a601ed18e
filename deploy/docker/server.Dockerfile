# dblocks server side: SuperLink (Flower's image), the dblocks ServerApp it runs, registry, Fleet gateway.
# Build from the repository root:  docker build -f deploy/docker/server.Dockerfile -t dblocks-server .
# The ServerApp runs inside the SuperLink's process tree (subprocess isolation), so dblocks and torch are
# installed into Flower's image; runtime dependency installation stays off (--disable-runtime-dependency-installation).
ARG FLWR_VERSION=1.41.0
FROM flwr/superlink:${FLWR_VERSION}

# PyTorch's CPU wheels (no CUDA): pass their index, e.g. --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index>
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
VOLUME ["/data"]
# the Fleet gateway: the only port companies need
EXPOSE 9092
ENTRYPOINT ["dbserver"]
CMD ["start"]
