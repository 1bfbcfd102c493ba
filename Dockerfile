# syntax=docker/dockerfile:1
# The controller image: one statically linked `cartwright` binary on distroless, as a non-root user.
#
#   docker build -t cartwright:0.1.0 .
#   docker buildx build --platform linux/arm64 -t REPOSITORY:TAG --push .   # for Graviton nodes
#
# The binary links glibc statically (`+crt-static` on the gnu target): HiGHS is C++, which the musl targets
# cannot build with Debian's toolchain. A static glibc binary still loads glibc's NSS modules to resolve
# host names (the AWS endpoints), so the runtime image is distroless `base` (the same Debian 12 glibc,
# CA certificates, user 65532) rather than `static`. CI lints this file with hadolint; the static build
# (these RUSTFLAGS and CMake file, `cargo build --target x86_64-unknown-linux-gnu`) was checked outside
# Docker: a static-pie binary that plans with HiGHS.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# HiGHS builds with cmake; aws-lc with cmake and clang's headers. Debian's current versions are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Static only for the target: build scripts and proc macros stay dynamic host binaries. The CMake file
# builds HiGHS's extras library static (its default, shared, cannot link with -static); highs-sys links
# only libhighs, so the extras library is named to the linker (after it, as static linking needs).
ENV RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-lhighs_extras" \
    CMAKE_TOOLCHAIN_FILE=/src/deploy/docker/static.cmake \
    CARGO_TARGET_DIR=/cargo-target
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/cargo-target \
    target="$(uname -m)-unknown-linux-gnu" \
 && cargo build --release --locked --bin cartwright --target "$target" \
 && cp "/cargo-target/$target/release/cartwright" /cartwright \
 && /cartwright --version

FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /cartwright /cartwright
USER 65532:65532
ENTRYPOINT ["/cartwright"]
CMD ["controller"]
