#!/usr/bin/env bash
# The whole test suite in one command, on a fresh Debian 12 machine; CI runs
# it through .ci/run. Non-zero exit on any failure.
#
# Steps: host packages -> cargo fmt -> clippy -> fuzz targets (short pass) ->
# test artefacts (guest kernel, rootfs, rig L1 kernel; cached, see
# docs/testing.md) -> cargo test (unit, KVM smoke and end-to-end tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
source resources/lib.sh

declare -a timings=()
step() {
    step_name=$1
    step_start=$SECONDS
    echo "==> $step_name" >&2
}
step_done() {
    timings+=("$(printf '%6ss  %s' $((SECONDS - step_start)) "$step_name")")
}
step_name=setup
on_exit '((EXIT_STATUS == 0)) || echo "==> FAILED during: $step_name (exit status $EXIT_STATUS)" >&2'

step "host packages"
# Kernel build dependencies are installed by resources/kernel/build.sh itself.
# passt: `--net user` (tests/tcg.rs runs it; the rig copies it into L1).
# fonts-dejavu-core: the bench chart's text (its unit test fails without it;
# apt_install uses --no-install-recommends, so nothing else pulls it in).
apt_install build-essential pkg-config qemu-system-x86 busybox-static cpio e2fsprogs passt \
    fonts-dejavu-core
command -v cargo >/dev/null ||
    die "cargo not found: install Rust (https://rustup.rs) with the rustfmt and clippy components"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
step_done

step "cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
step_done

step "cargo clippy"
cargo clippy --all-targets -- -D warnings
step_done

# 20,000 executions per target from the committed corpus, on the stable
# toolchain: ~30 s once built; building the instrumented targets the first
# time takes ~3 min more (docs/testing.md, "Fuzzing").
step "fuzz targets (short fixed-count pass)"
fuzz/run.sh
# The committed corpus is what the seed generator writes, every input runs
# clean without libFuzzer, and the seeds reach what they aim at (a harness
# that never reached the device or the copy-back would pass the pass above).
(cd fuzz && cargo test --release --test corpus)
step_done

# Build the artefacts here, with their progress, rather than silently inside
# `cargo test` (which would look hung for the ~10 minutes of a kernel build).
step "guest kernel"
resources/kernel/build.sh
step_done
step "guest root filesystems"
resources/rootfs/build-initramfs.sh
resources/rootfs/build-ext4.sh
step_done
step "Debian 12 guest image (mmdebstrap; 1-4 min cold, then cached)"
resources/debian/build.sh
step_done
if ! grep -qw -e vmx -e svm /proc/cpuinfo; then
    step "rig L1 kernel (no vmx/svm here: end-to-end tests run nested)"
    resources/rig/l1-kernel.sh
    step_done
fi

step "virtio-fs backend (virtiofsd from crates.io; ~2 min cold, then cached)"
resources/virtiofsd/build.sh
step_done

step "benchmark scripts' self-check"
resources/bench/selftest.sh
step_done

step "cargo test"
cargo test
step_done

echo "==> all tests passed; step timings:" >&2
printf '%s\n' "${timings[@]}" >&2
