# Boot the compressed bzImage (64-bit boot protocol) with 2 vCPUs.
exec "$KVMINI" run --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --memory 256M --cpus 2 \
    --cmdline "kvmini.test=hello -- echo cmdline=\$(cat /proc/cmdline); echo kvmini-cpus=\$(grep -c ^processor /proc/cpuinfo)"
