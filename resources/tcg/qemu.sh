#!/usr/bin/env bash
# Installs QEMU for `kvmini --accel tcg` (what `auto` picks on hosts without
# vmx/svm) when it is missing: Debian's qemu-system-x86 (needs root or
# sudo). kvmini runs this only when qemu-system-x86_64 is not on PATH.
# stdout: the path of qemu-system-x86_64.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
apt_install qemu-system-x86
command -v qemu-system-x86_64 || die "qemu-system-x86_64 not found after installing qemu-system-x86"
