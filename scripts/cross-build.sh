#!/usr/bin/env bash
# Cross-build the `labmesh` binary for ARM Linux (Raspberry Pi and friends)
# with Debian's cross compilers, in the `dist` profile (release, no debug
# info, stripped).
#
#   scripts/cross-build.sh [--install] [TARGET...]
#
# TARGET: aarch64-unknown-linux-gnu (64-bit Pi OS, default) and/or
# armv7-unknown-linux-gnueabihf (32-bit Pi OS). --install first installs the
# cross compilers (apt, needs root) and the rustup targets. The vendored
# libzmq is C++: the cc crate gets the target's C and C++ compilers through
# CC_<target> / CXX_<target>, and cargo the linker through
# CARGO_TARGET_<TARGET>_LINKER. Output: target/<TARGET>/dist/labmesh.
set -euo pipefail
cd "$(dirname "$0")/.."

install=0
targets=()
for a in "$@"; do
  case "$a" in
    --install) install=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) targets+=("$a") ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu)

gnu_prefix() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
    *) echo "unsupported target $1 (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2; return 1 ;;
  esac
}

for t in "${targets[@]}"; do
  p=$(gnu_prefix "$t")
  if [ "$install" = 1 ]; then
    if ! command -v "$p-g++" >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "gcc-$p" "g++-$p" >/dev/null
    fi
    rustup target add "$t"
  fi
  command -v "$p-g++" >/dev/null || { echo "$p-g++ not found (run with --install, or apt-get install g++-$p)" >&2; exit 1; }
  under=${t//-/_}
  upper=$(echo "$under" | tr '[:lower:]' '[:upper:]')
  export "CARGO_TARGET_${upper}_LINKER=$p-gcc"
  export "CC_${under}=$p-gcc" "CXX_${under}=$p-g++" "AR_${under}=$p-ar"
  t0=$(date +%s)
  cargo build --locked --profile dist --target "$t" --bin labmesh
  bin="target/$t/dist/labmesh"
  echo "$t: $bin $(stat -c %s "$bin") bytes, built in $(( $(date +%s) - t0 )) s"
done
