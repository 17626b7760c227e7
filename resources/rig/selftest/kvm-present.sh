# Rig self-test: L1 has a usable /dev/kvm.
ls -l /dev/kvm || exit 1
grep -m1 -o -w svm /proc/cpuinfo || { echo "no svm flag in L1"; exit 1; }
dmesg | grep -i -m3 -e "nested paging" -e kvm_amd || true
echo "kvm ok"
