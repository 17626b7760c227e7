# Boot the ELF vmlinux with 1 vCPU; the guest prints its command line (as
# cmdline=..., apart from the kernel's own log of it), CPU count, and how
# many CPUs list vmx or svm (kvmini hides both: no nested virtualization).
exec "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M --cpus 1 \
    --cmdline "kvmini.test=hello -- echo cmdline=\$(cat /proc/cmdline); echo kvmini-cpus=\$(grep -c ^processor /proc/cpuinfo); echo kvmini-hwvirt=\$(grep -cw -e vmx -e svm /proc/cpuinfo)"
