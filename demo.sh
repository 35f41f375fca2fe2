#!/usr/bin/env bash
# Builds ipvsca and shows its job: Python's http.server under ipvsca-run logs the clients a
# FULLNAT balancer announces, in network namespaces the demo creates and removes.
# Run as root on Debian; installs the build dependencies it needs.
set -euo pipefail
cd "$(dirname "$0")"
if ! dpkg -s libseccomp-dev pkg-config iproute2 >/dev/null 2>&1 || ! command -v python3 >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libseccomp-dev pkg-config iproute2 python3
fi
command -v cargo >/dev/null || { echo "demo.sh: needs a Rust toolchain (cargo), e.g. from rustup.rs" >&2; exit 1; }
# Every binary, so ipvsca-run and the demo (package ipvsca-tools) sit side by side.
cargo build --release --workspace --bins
exec target/release/ipvsca-demo
