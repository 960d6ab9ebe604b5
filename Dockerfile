# syntax=docker/dockerfile:1
# `rlhf serve` in a container: docs/deployment.md ("The container").
#
#   docker build -t rlhf-lab .
#   docker run --rm -p 8000:8000 -v /path/to/checkpoint:/model:ro rlhf-lab
#
# Build arguments:
#   TORCH_INDEX_URL  where pip gets torch (the version pinned in scripts/requirements.txt). The
#                    default, PyTorch's CPU index, gives a CPU-only libtorch. https://pypi.org/simple
#                    gives the CUDA wheel the project develops with (3.6 GB of libraries in the
#                    image; run it with --gpus).
#   RUST_VERSION     the toolchain of the build stage.

ARG RUST_VERSION=1.95

# ---- build: the venv's libtorch, the release binary linked against it ---------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# protobuf-compiler: the `tboard` crate compiles TensorBoard's protos; libgloo-dev: gloo's headers
# for csrc/collectives.cpp (the same two packages scripts/setup installs). python3-venv: the venv
# torch is installed into (bookworm's Python is 3.11).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        protobuf-compiler libgloo-dev python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# torch-sys finds libtorch through this venv's Python (LIBTORCH_USE_PYTORCH=1, `python` first on
# PATH), as scripts/env.sh sets it up outside the container.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
COPY scripts/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && torch_pin="$(grep -E '^torch==' /tmp/requirements.txt)" \
    && pip install --no-cache-dir --disable-pip-version-check --index-url "$TORCH_INDEX_URL" "$torch_pin" \
    && python -c 'import torch; print("libtorch", torch.__version__)'

WORKDIR /src
COPY . .
# build.rs bakes libtorch's directory (/opt/venv/lib/python3.11/site-packages/torch/lib) into the
# binary's rpath. The stage below puts the libraries at that same path, so the binary runs without
# LD_LIBRARY_PATH there too. (No .git in the build context: env.json records the commit as
# `unknown`.)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rlhf \
    && install -D -m 0755 target/release/rlhf /out/usr/local/bin/rlhf

# The shared libraries the binary loads, at their paths in the venv: torch/lib's (libtorch_cpu,
# libc10, libgomp, …; not libtorch_python, which needs libpython) and, for a CUDA wheel, the
# nvidia/*/lib ones that libtorch_cuda finds through its $ORIGIN-relative RUNPATH.
RUN set -eu; \
    site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    mkdir -p "/out$site/torch/lib"; \
    cp -a "$site"/torch/lib/*.so* "/out$site/torch/lib/"; \
    rm -f "/out$site/torch/lib/libtorch_python.so"; \
    cd "$site"; \
    for dir in nvidia torch.libs; do \
        if [ -d "$dir" ]; then find "$dir" -name '*.so*' -exec cp -a --parents -t "/out$site/" {} +; fi; \
    done; \
    ! ldd /out/usr/local/bin/rlhf | grep 'not found'

# ---- runtime: the binary and its libraries ------------------------------------------------------
FROM debian:bookworm-slim

# libgomp1: OpenMP for libtorch where the wheel does not bring its own; curl: the health check.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/ /
# Fails the build when a library the binary needs is missing.
RUN ! ldd /usr/local/bin/rlhf | grep 'not found' && rlhf --version

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin rlhf
USER rlhf
WORKDIR /home/rlhf

# The checkpoint directory (mount it read-only); the model id is `model` unless --name says
# otherwise.
VOLUME /model
EXPOSE 8000
# After SIGTERM the server refuses new connections (and /health answers 503 on open ones): the
# container turns unhealthy while it drains.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:8000/health || exit 1
# SIGTERM (docker stop) drains: in-flight requests finish, then the server exits 0. Give it more
# time than its --shutdown-grace-secs (120 s by default): `docker stop -t 130`, compose's
# stop_grace_period.
STOPSIGNAL SIGTERM
# Further flags come after the image name: docker run … rlhf-lab --name my-model --max-batch 64
ENTRYPOINT ["rlhf", "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/model"]
