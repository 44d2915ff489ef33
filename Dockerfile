# syntax=docker/dockerfile:1
# The one image of ens-operator (controller, receiver, emulator, crd): a static musl binary on
# distroless/static, running as the non-root user 65532.
#
#   docker build -t ghcr.io/ens-operator/ens-operator:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t … --push .
#
# Not built by the test suite (it runs no container engine).

FROM docker.io/library/rust:1.95-bookworm AS build
# musl-tools: the static binary's C toolchain (musl-gcc). make, g++ (its configure looks for a
# C++ compiler) and bash: rdkafka builds the Kafka hand-off's librdkafka from its bundled source
# with librdkafka's own configure (not CMake: see Cargo.toml); perl and linux-libc-dev: openssl-src
# builds the vendored OpenSSL librdkafka links statically (its Configure is Perl; the kernel
# headers it includes). All of it is linked into the binary, so the distroless/static stage needs
# no shared library. (The musl build of these C parts is not exercised by the test suite, which
# builds the gnu target: check `ldd` after a change.)
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools g++ make perl \
    linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN target="$(uname -m)-unknown-linux-musl" \
 && rustup target add "$target" \
 && cargo build --release --locked --bin ens-operator --target "$target" \
 && cp "target/$target/release/ens-operator" /ens-operator \
 && /ens-operator --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ens-operator /ens-operator
USER 65532:65532
ENTRYPOINT ["/ens-operator"]
