# Build: docker build -t cdc-archiver:local .
FROM rust:1.85-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libssl-dev \
    libsasl2-dev zlib1g-dev libzstd-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p cdc-archiver

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libcurl4 libssl3 \
    libsasl2-2 zlib1g libzstd1 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cdc-archiver /usr/local/bin/cdc-archiver
USER 65534
ENTRYPOINT ["/usr/local/bin/cdc-archiver"]
