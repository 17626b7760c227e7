# Boot the ELF vmlinux with 2 vCPUs: both must come up (MP table, LAPIC, INIT/SIPI).
exec "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M --cpus 2 \
    --cmdline "kvmini.test=hello -- echo cmdline=\$(cat /proc/cmdline); echo kvmini-cpus=\$(grep -c ^processor /proc/cpuinfo)"
