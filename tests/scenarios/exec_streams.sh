# stdout and stderr come back separated, complete and byte for byte: 1 MiB
# holding every byte value (NUL, CR, LF, ^C, ...) on stdout, 64 KiB of it on
# stderr, compared with the same bytes made here.
gen='printf "$(printf "\\\\%o" $(seq 0 255))" > /tmp/b && for i in 1 2 3 4 5 6 7 8 9 10 11 12; do cat /tmp/b /tmp/b > /tmp/c && mv /tmp/c /tmp/b; done'
sh -c "$gen" && cp /tmp/b /tmp/expected && head -c 65536 /tmp/expected > /tmp/expected-err
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M -- \
    sh -c "$gen && cat /tmp/b && head -c 65536 /tmp/b >&2" >/tmp/out 2>/tmp/err
echo "exec-rc=$?"
echo "stdout-bytes=$(wc -c </tmp/out) stderr-bytes=$(wc -c </tmp/err)"
cmp /tmp/out /tmp/expected && echo "stdout-identical"
cmp /tmp/err /tmp/expected-err && echo "stderr-identical"
