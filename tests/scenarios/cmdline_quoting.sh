# Shell syntax in the words after `--` survives the trip
# (scenario sh -> kvmini -> boot params -> kernel -> /init argv -> sh -c):
# `;`, `|`, `||`, `&&` and `>` (file= shows what the redirect wrote).
exec "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M \
    --cmdline "quiet -- echo one;echo two|tr a-z A-Z; false||echo alt-ok; test -d /proc/self&&echo and-ok; echo redirected>/tmp/f; echo file=\$(cat /tmp/f)"
