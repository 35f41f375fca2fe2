#!/usr/bin/env bash
# Builds the Debian package `ipvsca` (ipvsca, ipvsca-run, their man pages, the systemd unit,
# /etc/default/ipvsca)
# and its debug symbols (ipvsca-dbgsym, a .ddeb) in target/debian/, and prints the path of the
# .deb on stdout. Installs nothing; needs cargo-deb (`cargo install cargo-deb --locked`) and
# dpkg-shlibdeps (`apt-get install dpkg-dev`). Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
# The cargo that runs this script, if any (tests), so both use one toolchain.
cargo=${CARGO:-cargo}

if ! "$cargo" deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb is not installed (cargo install cargo-deb --locked)" >&2
    exit 1
fi
# Without it cargo-deb only warns and makes a package that depends on nothing.
if ! command -v dpkg-shlibdeps >/dev/null; then
    echo "build-deb.sh: dpkg-shlibdeps is missing; it computes the package's dependencies (apt-get install dpkg-dev)" >&2
    exit 1
fi

# The package's metadata is in cli/Cargo.toml; the binaries are built first because the man
# pages are written from them, then packaged as built.
"$cargo" build --release --locked -p ipvsca-cli --bins
bash deploy/man-pages.sh
built=$("$cargo" deb -p ipvsca-cli --no-build --locked)
# cargo-deb prints the .ddeb and the .deb, one a line.
grep '\.ddeb$' <<<"$built" | sed 's/^/build-deb.sh: debug symbols in /' >&2 || true
grep '\.deb$' <<<"$built"
