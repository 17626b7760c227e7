# kvmini exec returns the command's exit status (0, 1, 42) and its output;
# --env and --workdir reach the command, the host's environment does not.
K="$KVMINI exec --kernel $GUEST_VMLINUX --initrd $GUEST_INITRD --memory 128M"
$K -- true
echo "exec-rc-true=$?"
$K -- false
echo "exec-rc-false=$?"
SECRET=host-only PASSED=by-name $K -e GREETING="hello world" -e PASSED -w /proc -- \
    sh -c 'echo "env=[$GREETING] [$PASSED] pwd=$(pwd) secret=[$SECRET] release=$(uname -r)"; exit 42'
echo "exec-rc-42=$?"
