#!/usr/bin/env bash
# Builds the RPM package `ipvsca` (ipvsca, ipvsca-run, their man pages, the systemd unit,
# /etc/default/ipvsca) in target/generate-rpm/, and prints its absolute path on stdout. Its
# payload is zstd-compressed: rpm 4.14 or later installs it (RHEL 8 and later; ipvsca needs
# Linux 5.14, which means RHEL 9 or later anyway). Installs nothing; needs cargo-generate-rpm
# (`cargo install cargo-generate-rpm --locked`), which needs no rpmbuild. Honours
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

if ! "$cargo" generate-rpm --version >/dev/null 2>&1; then
    echo "build-rpm.sh: cargo-generate-rpm is not installed (cargo install cargo-generate-rpm --locked)" >&2
    exit 1
fi

"$cargo" build --release --locked -p ipvsca-cli --bins
bash deploy/man-pages.sh
# cargo-generate-rpm packages files as they are: strip copies (the release profile keeps line
# tables for backtraces; the Debian package moves them to a -dbgsym package instead).
release=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$release/rpm"
for binary in ipvsca ipvsca-run; do
    strip --strip-debug -o "$release/rpm/$binary" "$release/$binary"
done
out=${CARGO_TARGET_DIR:-target}/generate-rpm
rm -rf "$out"
mkdir -p "$out"
# The file times and the build time from the last commit, so that one commit gives one package.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
"$cargo" generate-rpm -p cli -o "$out/" >&2
realpath "$out"/*.rpm
