# A missing kernel is a clean, immediate error: non-zero exit, a message naming the file.
"$KVMINI" run --kernel /nonexistent/vmlinux --memory 64M
rc=$?
echo "kvmini-rc=$rc"
[ "$rc" -ne 0 ]
