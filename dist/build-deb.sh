#!/usr/bin/env bash
# Builds the Debian package in one command:
#   dist/build-deb.sh [cargo-deb options...]     e.g. --deb-revision 2
# Release binaries, man pages and shell completions generated from the clap
# definitions (target/man, target/completions), then `cargo deb --no-build`,
# which packs them with dist/'s systemd units. The .deb lands in
# target/debian/; its path is the last line printed.
# Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-deb: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
fi

cargo build --release --locked --bin tripcd --bin tripc

# The binaries just built, wherever CARGO_TARGET_DIR puts them.
run() { cargo run --quiet --release --locked --bin "$@"; }

# cargo-deb takes these from the crate's own target/ (its assets list).
man="$root/target/man"
comp="$root/target/completions"
rm -rf "$man" "$comp"
mkdir -p "$man" "$comp"
# Each binary prints its own page: tripcd's hidden --generate-man, tripc's
# hidden `man` subcommand.
run tripcd -- --generate-man >"$man/tripcd.8"
run tripc -- man >"$man/tripc.1"
for page in "$man/tripcd.8" "$man/tripc.1"; do
  # An empty or non-roff page means the flag is broken: stop here.
  if ! grep -q '^\.TH ' "$page"; then
    echo "build-deb: $page is not a man page (no .TH line)" >&2
    exit 1
  fi
  gzip -9n "$page"
done
run tripc -- completions bash >"$comp/tripc"
run tripc -- completions zsh >"$comp/_tripc"
run tripc -- completions fish >"$comp/tripc.fish"

cargo deb --no-build --locked "$@"
