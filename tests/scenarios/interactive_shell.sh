# No command after `--`: /init starts an interactive shell on the serial
# console, and we type into it through kvmini's stdin (8250 receive path).
# The leading blank line is padding: the guest's 8250 driver resets the FIFO
# when it opens the port, dropping whatever was typed before (as on real
# hardware). The backslash-newline splits "typed-ok" so that only the shell
# executing the echo prints it, not the tty echoing our input.
printf '%64s\necho typed-\\\nok; exit\n' '' |
    "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M --cmdline "quiet"
