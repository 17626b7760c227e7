# No command after `--`: /init starts an interactive shell on the serial
# console, and we type into it through kvmini's stdin (8250 receive path).
# We type only once the shell's prompt is on the console: the guest's 8250
# driver resets the FIFO when it opens the port, and input that arrives
# before the shell reads its terminal can be lost (typing too early made
# this scenario fail under load). The backslash-newline splits "typed-ok"
# so that only the shell executing the echo prints it, not the tty echoing
# our input.
dir=$(mktemp -d)
mkfifo "$dir/in"
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M \
    --cmdline "quiet" <"$dir/in" >"$dir/out" 2>&1 &
pid=$!
exec 3>"$dir/in" # hold the FIFO open: kvmini sees no end of input
i=0
until grep -q '/ # ' "$dir/out"; do
    i=$((i + 1))
    if [ "$i" -gt 600 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "no shell prompt after ${i} checks"
        break
    fi
    sleep 0.1
done
printf 'echo typed-\\\nok; exit\n' >&3
wait "$pid"
rc=$?
exec 3>&-
cat "$dir/out"
rm -rf "$dir"
exit "$rc"
