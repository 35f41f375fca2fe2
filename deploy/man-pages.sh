#!/usr/bin/env bash
# Writes the man pages of the release binaries (ipvsca.1, ipvsca-SUBCOMMAND.1, ipvsca-run.1),
# compressed as Debian and Fedora ship them, into TARGET/release/man/, where the packages'
# assets take them. The binaries must be built (cargo build --release); honours
# CARGO_TARGET_DIR. Used by build-deb.sh and build-rpm.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
release=${CARGO_TARGET_DIR:-target}/release
man=$release/man
rm -rf "$man"
"$release/ipvsca" generate-man "$man"
"$release/ipvsca-run" --generate-man "$man"
# -n: no name or time stamp, so that the same sources give the same package.
gzip -9n "$man"/*.1
