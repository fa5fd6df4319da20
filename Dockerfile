# RepDiff images. `server` runs the API and serves the browser app (and, with --workers > 0, runs jobs on
# the CPU); `worker-cuda` runs jobs on an NVIDIA GPU. Build from the repository root: docker compose build.
FROM rust:1-bookworm AS build
WORKDIR /src
# The workspace alone, so that a change to docs, scripts or the frontend keeps this stage's cached build.
COPY Cargo.toml Cargo.lock ./
COPY backend backend
COPY migrations migrations
COPY tests tests
# Queries are checked against backend/server/.sqlx, so the build needs no database.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bin repdiff

# The browser app (Leptos, wasm32): scripts/build-frontend adds the wasm32 target and the wasm-bindgen-cli
# that frontend/Cargo.lock pins, and shrinks the module with npm's binaryen.
FROM rust:1-bookworm AS frontend
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The app, the API types it shares with the server (backend/api, whose manifest inherits from the root
# workspace's), and its build script.
COPY Cargo.toml Cargo.lock ./
COPY backend backend
COPY frontend frontend
COPY scripts/build-frontend scripts/
RUN scripts/build-frontend

FROM debian:bookworm-slim AS server
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/repdiff /usr/local/bin/repdiff
COPY --from=frontend /src/frontend/dist /usr/share/repdiff/frontend
RUN useradd --system --create-home repdiff && mkdir /data && chown repdiff /data
USER repdiff
ENV REPDIFF_DATA=/data REPDIFF_WEIGHTS=/model-weights REPDIFF_STATIC=/usr/share/repdiff/frontend
EXPOSE 8080
ENTRYPOINT ["repdiff"]
CMD ["serve", "--listen", "0.0.0.0:8080"]

FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build-cuda
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH SQLX_OFFLINE=true
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY backend backend
COPY migrations migrations
COPY tests tests
RUN cargo build --release --locked --bin repdiff --features repdiff-server/cuda

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS worker-cuda
COPY --from=build-cuda /src/target/release/repdiff /usr/local/bin/repdiff
RUN useradd --system --create-home repdiff && mkdir /data && chown repdiff /data
USER repdiff
ENV REPDIFF_DATA=/data REPDIFF_WEIGHTS=/model-weights
ENTRYPOINT ["repdiff"]
CMD ["worker"]
