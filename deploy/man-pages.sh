#!/usr/bin/env bash
# Writes the man pages of the release binaries (ipvsca.1, ipvsca-SUBCOMMAND.1, ipvsca-run.1),
# compressed as Debian and Fedora ship them, into TARGET/release/man/, where the packages'
# assets take them. The binaries must be built (cargo build --release); honours
# CARGO_TARGET_DIR. Used by build-deb.sh and build-rpm.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
release=${CARGO_TARGET_DIR:-target}/release
man=$release/man
fresh=$(mktemp -d "$release/.man.XXXXXX")
trap 'rm -rf "$fresh"' EXIT
"$release/ipvsca" generate-man "$fresh"
"$release/ipvsca-run" --generate-man "$fresh"
# -n: no name or time stamp, so that the same sources give the same package.
gzip -9n "$fresh"/*.1
# Each page replaced by a rename, and pages no longer written removed afterwards: a package
# being built from $man at the same time never misses a page.
mkdir -p "$man"
written=$(cd "$fresh" && ls)
for page in $written; do
    mv -f "$fresh/$page" "$man/$page"
done
for page in $(cd "$man" && ls); do
    grep -qxF "$page" <<<"$written" || rm -f "$man/$page"
done
