# Stand-in for rust:1-bookworm where Docker Hub is out of reach: Debian plus the host's Rust toolchain,
# laid out as the official image lays it out (RUSTUP_HOME, CARGO_HOME, PATH). Context: a folder holding
# `rustup/` (the host's ~/.rustup with one toolchain), `cargo-bin/` (its ~/.cargo/bin) and `extra-ca/` (the
# host's own CA certificates, e.g. an egress proxy's, so that cargo and npm reach their registries as the
# host does).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential pkg-config ca-certificates \
    curl git && rm -rf /var/lib/apt/lists/*
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
COPY rustup /usr/local/rustup
COPY cargo-bin /usr/local/cargo/bin
RUN rustc --version && cargo --version
