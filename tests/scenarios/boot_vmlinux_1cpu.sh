# Boot the ELF vmlinux with 1 vCPU; the guest prints its command line and CPU count.
exec "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M --cpus 1 \
    --cmdline "kvmini.test=hello -- cat /proc/cmdline; echo kvmini-cpus=\$(grep -c ^processor /proc/cpuinfo)"
