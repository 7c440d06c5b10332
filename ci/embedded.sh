#!/usr/bin/env bash
# The core on microcontrollers: builds it for Cortex-M0/M0+, M3, M4F and RISC-V 32, runs
# examples/cortex-m in QEMU on a Cortex-M3 and a Cortex-M0 (a SysTick interrupt submits
# into static stores while the main loop awaits them), builds the same scenario on
# embassy-sync and prints both programs' flash and RAM.
#
# rustup cannot add targets here, so this uses Debian's rustc (rustc-web, 1.96, with the
# library source in rust-web-src) and builds `core` itself (-Zbuild-std, hence
# RUSTC_BOOTSTRAP=1); the host's stable toolchain stays the one for everything else.
# It installs what it needs when it is missing.
# Clippy on the example runs here too (Debian's, for the same reason); .ci/run checks its
# formatting with the host's rustfmt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="$root/target/embedded"
step() { printf '\n-- %s\n' "$*"; }
fail() { echo "embedded check FAILED: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
# Never removes a package to make room (--no-remove): an image's own packages stay.
apt_install() {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        --no-remove "$@" >/dev/null
}

# Debian's toolchain (its cargo is the package cargo-web; rustc-web alone has none), the
# library source for build-std, and a linker for bare metal.
if [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ] ||
    [ ! -x /usr/bin/cargo-clippy ] || ! command -v ld.lld >/dev/null; then
    step "installing rustc-web cargo-web rust-web-src rust-web-clippy lld"
    apt_install rustc-web cargo-web rust-web-src rust-web-clippy lld
fi

# QEMU. Some images carry a newer qemu-utils (from backports) that refuses Debian 12's
# qemu-system-arm, and apt would remove it; then the package is unpacked into target/
# instead, with its libraries installed.
QEMU=$(command -v qemu-system-arm || true)
if [ -z "$QEMU" ]; then
    QEMU="$CARGO_TARGET_DIR/qemu/usr/bin/qemu-system-arm"
    if [ ! -x "$QEMU" ]; then
        step "installing qemu-system-arm"
        if ! apt_install qemu-system-arm 2>/dev/null; then
            libraries=$(apt-cache depends qemu-system-arm | awk '/ Depends:/ {print $2}' | grep -v '^qemu')
            # shellcheck disable=SC2086
            apt_install $libraries
            mkdir -p "$CARGO_TARGET_DIR/qemu"
            (cd "$CARGO_TARGET_DIR/qemu" && apt-get download qemu-system-arm >/dev/null 2>&1 &&
                dpkg -x qemu-system-arm_*.deb . && rm qemu-system-arm_*.deb)
        fi
        command -v qemu-system-arm >/dev/null && QEMU=$(command -v qemu-system-arm)
    fi
fi
"$QEMU" --version | head -1

# Debian's toolchain, never rustup's proxies.
export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
unset RUSTUP_TOOLCHAIN
cargo() { /usr/bin/cargo "$@"; }
rustc --version

step "the core for four targets (no default features; alloc where there is compare-and-swap)"
build_core() { # TARGET FEATURES
    local features=${2:+--features $2} std=core
    [[ ${2:-} == *alloc* ]] && std=core,alloc
    # shellcheck disable=SC2086
    cargo build -q --manifest-path core/Cargo.toml -p storecast --no-default-features $features \
        --target "$1" -Zbuild-std=$std || fail "storecast does not build for $1 (${2:-no features})"
    printf '   %-28s %-28s ok\n' "$1" "${2:-(none)}"
}
for target in thumbv6m-none-eabi thumbv7m-none-eabi thumbv7em-none-eabihf riscv32imc-unknown-none-elf; do
    build_core "$target" ""
    build_core "$target" critical-section
done
for target in thumbv7m-none-eabi thumbv7em-none-eabihf; do
    build_core "$target" alloc
    build_core "$target" alloc,critical-section
done

example=examples/cortex-m
run_qemu() { # NAME BINARY QEMU-ARGS...
    local name=$1 binary=$2
    shift 2
    echo "   $name:"
    local log status=0
    log=$(mktemp)
    timeout 120 "$QEMU" "$@" -nographic -semihosting-config enable=on,target=native \
        -kernel "$binary" >"$log" 2>&1 || status=$?
    grep -v '^Timer with period zero' "$log" | sed 's/^/      /' || true
    rm -f "$log"
    [ "$status" -eq 0 ] || fail "$binary exited with $status on $name"
}
build_example() { # TARGET BIN
    # From its directory, so that its .cargo/config.toml (linker, link script) applies.
    (cd "$example" && cargo build -q --release --bin "$2" --target "$1" -Zbuild-std=core) || fail "$example ($2) does not build for $1"
}

step "clippy on $example (Cortex-M3)"
(cd "$example" && cargo clippy -q --bins --target thumbv7m-none-eabi -Zbuild-std=core \
    -- -D warnings) || fail "clippy on $example"

step "$example in QEMU: SysTick submits into static stores, the main loop awaits them"
for bin in storecast-qemu embassy-sync-qemu; do
    build_example thumbv7m-none-eabi "$bin"
    build_example thumbv6m-none-eabi "$bin"
done
m3=$CARGO_TARGET_DIR/thumbv7m-none-eabi/release
m0=$CARGO_TARGET_DIR/thumbv6m-none-eabi/release
run_qemu "Cortex-M3 (lm3s6965evb)" "$m3/storecast-qemu" -cpu cortex-m3 -machine lm3s6965evb
run_qemu "Cortex-M0 (microbit)" "$m0/storecast-qemu" -machine microbit
run_qemu "Cortex-M3, embassy-sync" "$m3/embassy-sync-qemu" -cpu cortex-m3 -machine lm3s6965evb

step "size (opt-level = \"s\", LTO; flash = text + data, RAM = data + bss, in bytes)"
printf '   %-10s %-20s %8s %8s %8s %8s %8s\n' core program text data bss flash RAM
for core in M3 M0; do
    dir=$m3
    [ "$core" = M0 ] && dir=$m0
    for bin in storecast-qemu embassy-sync-qemu; do
        read -r text data bss _ < <(llvm-size "$dir/$bin" | tail -1)
        printf '   %-10s %-20s %8d %8d %8d %8d %8d\n' "$core" "$bin" "$text" "$data" "$bss" \
            $((text + data)) $((data + bss))
    done
done
