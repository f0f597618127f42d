#!/usr/bin/env bash
# Builds `sandstone` and the statically linked `sandstone-init` beside it.
# Usage: scripts/build.sh [debug|release]   (prints the absolute output directory)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
flag=(); [ "$profile" = release ] && flag=(--release)
target="${CARGO_TARGET_DIR:-target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo build "${flag[@]}" -p sandstone >&2
# PID 1 must not depend on any library of the sandbox's rootfs.
RUSTFLAGS="-C target-feature=+crt-static" cargo build "${flag[@]}" -p sandstone-init --target "$triple" >&2
out="$(cd "$target/$profile" && pwd)"
install -m 0755 "$target/$triple/$profile/sandstone-init" "$out/sandstone-init"
echo "$out"
