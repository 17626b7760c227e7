//! CPUID filtering: turns what KVM supports into what one vCPU of this VM should see
//! (APIC ids, topology, hypervisor bit, no PMU, no VMX/SVM: kvmini offers
//! no nested virtualization).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 0x1: version and feature information.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 0x4: deterministic cache parameters.
const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 0x6: thermal and power management.
const LEAF_POWER: u32 = 0x6;
/// Leaf 0xA: architectural performance monitoring.
const LEAF_PERFMON: u32 = 0xa;
/// Leaf 0xB: extended topology enumeration.
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1F: V2 extended topology enumeration.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

/// AMD leaf 0x8000_0001: extended feature flags.
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
/// AMD leaf 0x8000_000A: SVM revision and features.
const LEAF_AMD_SVM: u32 = 0x8000_000a;
/// AMD leaf 0x8000_0008: address sizes and core count.
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
/// AMD leaf 0x8000_001D: cache topology.
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
/// AMD leaf 0x8000_001E: extended APIC id, core and node ids.
const LEAF_AMD_IDS: u32 = 0x8000_001e;
/// Subleaves of a topology leaf we describe: SMT, core, and the terminating invalid level.
const TOPOLOGY_SUBLEAVES: u32 = 3;

/// Leaf 0x1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX.TSC_DEADLINE: KVM emulates the LAPIC's TSC-deadline mode
/// (KVM_CAP_TSC_DEADLINE_TIMER) but leaves the bit out of its supported
/// CPUID. Without it the guest calibrates the LAPIC timer against the PIT,
/// slowly, and under nested emulation may give the LAPIC timer up.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x1 ECX: VMX (Intel VT-x). Hidden, with SVM below: kvmini runs no
/// nested hypervisor, and a guest kernel that sees either loads its KVM
/// module and sets up virtualization state (EFER.SVME, VMXON regions) the
/// VM was never meant to carry, as Debian's kernel did in the nested rig.
const ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM (AMD-V).
const ECX_AMD_SVM: u32 = 1 << 2;
/// Leaf 0x1 EDX: multi-threading (more than one logical processor per package).
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size, in 8-byte units (64 bytes).
const CLFLUSH_SIZE: u32 = 8;
/// Leaf 0x6 EAX: always running APIC timer, the one power feature KVM virtualizes.
const EAX_ARAT: u32 = 1 << 2;

/// Topology level types (leaf 0xB/0x1F ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Smallest `n` with `2^n >= count`: the APIC id bits needed for `count` CPUs.
fn apic_id_shift(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

fn filter_features(e: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8, tsc_deadline: bool) {
    // EBX[7:0] brand index is kept; CLFLUSH size, logical processor count and APIC id are ours.
    e.ebx = (e.ebx & 0xff)
        | (CLFLUSH_SIZE << 8)
        | (u32::from(cpu_count) << 16)
        | (u32::from(cpu_index) << 24);
    e.ecx |= ECX_HYPERVISOR;
    e.ecx &= !ECX_VMX;
    if tsc_deadline {
        e.ecx |= ECX_TSC_DEADLINE;
    }
    if cpu_count > 1 {
        e.edx |= EDX_HTT;
    } else {
        e.edx &= !EDX_HTT;
    }
}

fn filter_cache_params(e: &mut kvm_cpuid_entry2, cpu_count: u8) {
    let cores_minus_one = u32::from(cpu_count.saturating_sub(1)).min(63);
    e.eax = (cache_sharing(e.eax, cpu_count) & !0xfc00_0000) | (cores_minus_one << 26);
}

fn filter_topology(e: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    match e.index {
        0 => {
            // SMT level: one thread per core.
            e.eax = 0;
            e.ebx = 1;
            e.ecx = LEVEL_TYPE_SMT << 8;
        }
        1 => {
            // Core level: every vCPU is a core of the one package.
            e.eax = apic_id_shift(cpu_count);
            e.ebx = u32::from(cpu_count);
            e.ecx = (LEVEL_TYPE_CORE << 8) | 1;
        }
        index => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = index & 0xff;
        }
    }
    e.edx = u32::from(cpu_index);
}

/// Threads sharing a cache (EAX[25:14] of leaves 0x4 and 0x8000_001D, minus one): L1/L2
/// are private to a core, L3 is shared by the whole package.
fn cache_sharing(eax: u32, cpu_count: u8) -> u32 {
    let level = (eax >> 5) & 0x7;
    let sharing_minus_one = if level >= 3 {
        u32::from(cpu_count.saturating_sub(1)) & 0xfff
    } else {
        0
    };
    (eax & !0x03ff_c000) | (sharing_minus_one << 14)
}

fn filter_amd_sizes(e: &mut kvm_cpuid_entry2, cpu_count: u8) {
    // ECX[15:12] APIC id size, ECX[7:0] number of threads in the package minus one.
    e.ecx &= !0xf0ff;
    e.ecx |= (apic_id_shift(cpu_count) << 12) | u32::from(cpu_count.saturating_sub(1));
}

fn filter_amd_ids(e: &mut kvm_cpuid_entry2, cpu_index: u8) {
    // Extended APIC id, one thread per core with core id = APIC id, a single node.
    e.eax = u32::from(cpu_index);
    e.ebx = u32::from(cpu_index);
    e.ecx = 0;
}

/// Makes sure a present topology leaf lists the SMT and core levels and the terminating
/// level: KVM may report only subleaf 0, which would make every vCPU its own package.
fn complete_topology_leaf(cpuid: &mut CpuId, leaf: u32) {
    if !cpuid.as_slice().iter().any(|e| e.function == leaf) {
        return;
    }
    for index in 0..TOPOLOGY_SUBLEAVES {
        let present = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == leaf && e.index == index);
        if present {
            continue;
        }
        let entry = kvm_cpuid_entry2 {
            function: leaf,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        };
        if cpuid.push(entry).is_err() {
            log::warn!("no room to add CPUID leaf {leaf:#x} subleaf {index}");
            return;
        }
    }
}

/// Adjusts `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_index` of
/// `cpu_count`: one package of `cpu_count` single-threaded cores. KVM's hypervisor leaves
/// (0x4000_0000.., "KVMKVMKVM", kvm-clock) are kept.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8, tsc_deadline: bool) {
    complete_topology_leaf(cpuid, LEAF_TOPOLOGY);
    complete_topology_leaf(cpuid, LEAF_TOPOLOGY_V2);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => filter_features(e, cpu_index, cpu_count, tsc_deadline),
            LEAF_CACHE_PARAMS => filter_cache_params(e, cpu_count),
            LEAF_POWER => {
                e.eax &= EAX_ARAT;
                e.ecx = 0;
            }
            LEAF_PERFMON => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => filter_topology(e, cpu_index, cpu_count),
            LEAF_AMD_FEATURES => e.ecx &= !ECX_AMD_SVM,
            LEAF_AMD_SVM => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_AMD_SIZES => filter_amd_sizes(e, cpu_count),
            LEAF_AMD_CACHE => e.eax = cache_sharing(e.eax, cpu_count),
            LEAF_AMD_IDS => filter_amd_ids(e, cpu_index),
            _ => {}
        }
    }
}

/// Whether a `/proc/cpuinfo` text lists the `vmx` (Intel VT-x) or `svm` (AMD-V) flag.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Whether the host CPU advertises hardware virtualization (false if /proc/cpuinfo is unreadable).
pub fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| cpuinfo_has_hw_virt(&s))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            padding: [0; 3],
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> &kvm_cpuid_entry2 {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(0x0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(
                0x1,
                0,
                [0x906ea, 0xff00_0802, 0x0100_0001 | ECX_VMX, EDX_HTT | 1],
            ),
            // L1d, L2, L3 cache descriptors with host topology bits set.
            entry(0x4, 0, [(0x3f << 26) | (0x1 << 14) | (1 << 5) | 1, 0, 0, 0]),
            entry(0x4, 1, [(0x3f << 26) | (0x1 << 14) | (2 << 5) | 3, 0, 0, 0]),
            entry(0x4, 2, [(0x3f << 26) | (0xf << 14) | (3 << 5) | 3, 0, 0, 0]),
            entry(0x6, 0, [0xffff_ffff, 0, 0xffff_ffff, 0]),
            entry(0xa, 0, [0x0730_0404, 0xff, 0, 0x603]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 16, 0x201, 7]),
            entry(0xb, 2, [0, 0, 2, 7]),
            entry(0x1f, 0, [1, 2, 0x100, 7]),
            entry(0x1f, 1, [4, 16, 0x201, 7]),
            entry(
                0x8000_0001,
                0,
                [0, 0, 0x0000_01f1 | ECX_AMD_SVM, 0x2c10_0800],
            ),
            entry(0x8000_000a, 0, [1, 0x8000, 0, 0x1ebf_bcff]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_apic_id_count_clflush_hypervisor() {
        let mut c = sample();
        filter_cpuid(&mut c, 3, 4, false);
        let e = find(&c, 1, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!((e.ebx >> 8) & 0xff, 8);
        assert_eq!(e.ebx & 0xff, 0x02); // brand index kept
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & (1 << 24), 0); // TSC deadline as KVM said
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn no_vmx_or_svm_for_the_guest() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 1, false);
        assert_eq!(find(&c, 1, 0).ecx & ECX_VMX, 0, "VMX hidden");
        let amd = find(&c, 0x8000_0001, 0);
        assert_eq!(amd.ecx & ECX_AMD_SVM, 0, "SVM hidden");
        assert_eq!(amd.ecx, 0x0000_01f1, "the other extended features kept");
        assert_eq!(amd.edx, 0x2c10_0800);
        let svm = find(&c, 0x8000_000a, 0);
        assert_eq!([svm.eax, svm.ebx, svm.ecx, svm.edx], [0; 4], "no SVM leaf");
    }

    #[test]
    fn leaf1_tsc_deadline_when_kvm_emulates_it() {
        let mut c = sample();
        c.as_mut_slice()
            .iter_mut()
            .filter(|e| e.function == 1)
            .for_each(|e| e.ecx &= !ECX_TSC_DEADLINE);
        let mut without = c.clone();
        filter_cpuid(&mut without, 0, 1, false);
        assert_eq!(find(&without, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        filter_cpuid(&mut c, 0, 1, true);
        assert_ne!(find(&c, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn leaf1_single_cpu_clears_htt() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 1, false);
        let e = find(&c, 1, 0);
        assert_eq!(e.edx & EDX_HTT, 0);
        assert_eq!(e.edx & 1, 1);
        assert_eq!(e.ebx >> 16, 1);
    }

    #[test]
    fn leaf4_cores_and_cache_sharing() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 6, false);
        for sub in 0..3 {
            let e = find(&c, 4, sub);
            assert_eq!(e.eax >> 26, 5, "subleaf {sub}");
            let sharing = (e.eax >> 14) & 0xfff;
            assert_eq!(sharing, if sub == 2 { 5 } else { 0 }, "subleaf {sub}");
            assert_eq!(e.eax & 0x3fff, [0x21, 0x43, 0x63][sub as usize]);
        }
    }

    #[test]
    fn leaf4_cores_capped_at_64() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 200, false);
        assert_eq!(find(&c, 4, 0).eax >> 26, 63);
        assert_eq!((find(&c, 4, 2).eax >> 14) & 0xfff, 199);
    }

    #[test]
    fn topology_leaves() {
        let mut c = sample();
        filter_cpuid(&mut c, 2, 5, false);
        for leaf in [0xb, 0x1f] {
            let smt = find(&c, leaf, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            let core = find(&c, leaf, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 5, 0x201, 2));
        }
        let other = find(&c, 0xb, 2);
        assert_eq!((other.eax, other.ebx, other.ecx, other.edx), (0, 0, 2, 2));
    }

    #[test]
    fn missing_topology_subleaves_are_added() {
        // What KVM reports on an AMD host: leaf 0xB with subleaf 0 only, all zero.
        let mut c = CpuId::from_entries(&[entry(0x1, 0, [0; 4]), entry(0xb, 0, [0; 4])]).unwrap();
        filter_cpuid(&mut c, 1, 4, false);
        assert_eq!(c.as_slice().len(), 4);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 1));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        let end = find(&c, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 1));
        // No leaf 0x1F is invented.
        assert!(!c.as_slice().iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn amd_topology_leaves() {
        let mut c = CpuId::from_entries(&[
            entry(0x8000_0008, 0, [0x3030, 0x110a_d205, 0x7001, 0]),
            entry(0x8000_001d, 0, [0x121, 0x01c0_003f, 0x3f, 0]),
            entry(0x8000_001d, 3, [0x4163, 0x03c0_003f, 0x7fff, 1]),
            entry(0x8000_001e, 0, [0, 0x100, 0x101, 0]),
        ])
        .unwrap();
        filter_cpuid(&mut c, 5, 6, false);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, (3 << 12) | 5);
        assert_eq!(find(&c, 0x8000_0008, 0).eax, 0x3030);
        assert_eq!((find(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!(find(&c, 0x8000_001d, 3).eax, 0x163 | (5 << 14));
        let ids = find(&c, 0x8000_001e, 0);
        assert_eq!((ids.eax, ids.ebx, ids.ecx), (5, 5, 0));
    }

    #[test]
    fn apic_id_shift_is_ceil_log2() {
        let cases = [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (8, 3),
            (9, 4),
            (255, 8),
        ];
        for (n, shift) in cases {
            assert_eq!(apic_id_shift(n), shift, "{n}");
        }
        assert_eq!(apic_id_shift(0), 0);
    }

    #[test]
    fn power_and_perfmon_cleared() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 1, false);
        let pm = find(&c, 6, 0);
        assert_eq!((pm.eax, pm.ecx), (EAX_ARAT, 0));
        let perf = find(&c, 0xa, 0);
        assert_eq!((perf.eax, perf.ebx, perf.ecx, perf.edx), (0, 0, 0, 0));
    }

    #[test]
    fn other_leaves_untouched() {
        let before = sample();
        let mut c = sample();
        filter_cpuid(&mut c, 1, 2, false);
        for leaf in [0x0, 0x4000_0000] {
            let (a, b) = (find(&before, leaf, 0), find(&c, leaf, 0));
            assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (b.eax, b.ebx, b.ecx, b.edx));
        }
        // Only the terminating subleaf 2 of leaf 0x1F was added.
        assert_eq!(c.as_slice().len(), before.as_slice().len() + 1);
        assert_eq!(find(&c, 0x1f, 2).ecx, 2);
    }

    #[test]
    fn filter_real_kvm_cpuid() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let mut c = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        filter_cpuid(&mut c, 1, 2, false);
        let e = find(&c, 1, 0);
        assert_eq!(e.ebx >> 24, 1);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        // KVM's signature leaf is still there.
        let sig = find(&c, 0x4000_0000, 0);
        let mut name = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name[..9], b"KVMKVMKVM");
    }

    #[test]
    fn cpuinfo_flags() {
        let intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse\n";
        let amd = "processor\t: 0\nflags\t\t: fpu svm\n";
        let none = "processor\t: 0\nflags\t\t: fpu vme sse hypervisor\nvmx flags\t: ept\n";
        assert!(cpuinfo_has_hw_virt(intel));
        assert!(cpuinfo_has_hw_virt(amd));
        assert!(!cpuinfo_has_hw_virt(none));
        assert!(!cpuinfo_has_hw_virt(""));
        assert!(!cpuinfo_has_hw_virt("flags: vmxx svmm"));
    }
}
