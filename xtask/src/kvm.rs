//! Does `/dev/kvm` really offer VT-x to a guest (nested virtualization)? Decided from three
//! readings, kept apart from the reading so the rule is unit-tested.

use std::fs::{self, OpenOptions};

pub const CPUINFO: &str = "/proc/cpuinfo";
pub const DEV_KVM: &str = "/dev/kvm";
pub const NESTED_PARAM: &str = "/sys/module/kvm_intel/parameters/nested";

/// What the host shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmReadings {
    /// Contents of /proc/cpuinfo.
    pub cpuinfo: String,
    /// Opening /dev/kvm read-write: Ok, or the error text.
    pub dev_kvm: Result<(), String>,
    /// Contents of /sys/module/kvm_intel/parameters/nested, if it exists.
    pub nested: Option<String>,
}

impl KvmReadings {
    pub fn read_host() -> Self {
        Self {
            cpuinfo: fs::read_to_string(CPUINFO).unwrap_or_default(),
            dev_kvm: OpenOptions::new()
                .read(true)
                .write(true)
                .open(DEV_KVM)
                .map(drop)
                .map_err(|e| e.to_string()),
            nested: fs::read_to_string(NESTED_PARAM).ok(),
        }
    }
}

/// Ok when nested QEMU/KVM can run a VT-x hypervisor here, else why not.
pub fn nested_vmx(readings: &KvmReadings) -> Result<(), String> {
    let has_vmx = readings
        .cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|flag| flag == "vmx"));
    if !has_vmx {
        return Err(
            "no VMX in /proc/cpuinfo: this CPU (or the hypervisor under it) offers no VT-x".into(),
        );
    }
    if let Err(e) = &readings.dev_kvm {
        return Err(format!("cannot open {DEV_KVM} read-write: {e}"));
    }
    match readings.nested.as_deref().map(str::trim) {
        Some("Y" | "y" | "1") => Ok(()),
        Some(other) => Err(format!(
            "kvm_intel nested={other}: reload it with `modprobe -r kvm_intel && modprobe kvm_intel nested=1`"
        )),
        None => Err(format!("kvm_intel is not loaded (no {NESTED_PARAM})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(flags: &str, dev: Result<(), &str>, nested: Option<&str>) -> KvmReadings {
        KvmReadings {
            cpuinfo: format!("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n"),
            dev_kvm: dev.map_err(String::from),
            nested: nested.map(String::from),
        }
    }

    #[test]
    fn vmx_host_with_nested_kvm_is_usable() {
        assert_eq!(
            nested_vmx(&readings("fpu vme vmx sse2", Ok(()), Some("Y\n"))),
            Ok(())
        );
        assert_eq!(nested_vmx(&readings("vmx", Ok(()), Some("1"))), Ok(()));
    }

    #[test]
    fn missing_vmx_flag_is_the_first_reason() {
        // "vmxext"-like flags must not count as vmx; /dev/kvm alone is not enough.
        let r = nested_vmx(&readings("fpu svm hypervisor vmxfoo", Ok(()), Some("Y")));
        assert!(r.unwrap_err().starts_with("no VMX in /proc/cpuinfo"));
    }

    #[test]
    fn unopenable_dev_kvm_and_nested_off_are_reported() {
        let r = nested_vmx(&readings("vmx", Err("Permission denied"), Some("Y")));
        assert!(r.unwrap_err().contains("Permission denied"));
        let r = nested_vmx(&readings("vmx", Ok(()), Some("N\n")));
        assert!(r.unwrap_err().contains("nested=N"));
        let r = nested_vmx(&readings("vmx", Ok(()), None));
        assert!(r.unwrap_err().contains("not loaded"));
    }
}
