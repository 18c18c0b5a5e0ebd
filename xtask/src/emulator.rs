//! Starting, watching and stopping the emulators.
//!
//! Every boot runs in its own directory (image, serial log, emulator log, configuration), is bounded
//! by a timeout, and its emulator is killed with SIGKILL whatever happens (Bochs with the `term`
//! display ignores SIGTERM): by [`Running`]'s `Drop`, and by the kernel (PR_SET_PDEATHSIG) if xtask
//! itself dies. The emulator runs in its own session (setsid) with stdin from /dev/null, so it
//! never reads or draws on the user's terminal.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::prereq::{self, Package};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// Bochs 2.7, `tigerlake` CPU: VT-x with EPT, no ACPI tables, no IOMMU.
    Bochs,
    /// QEMU q35 with TCG: VT-d and the edu device, no VT-x.
    QemuTcg,
    /// QEMU q35 on KVM with nested VMX: VT-x and VT-d together.
    QemuKvm,
}

impl Emulator {
    pub fn label(self) -> &'static str {
        match self {
            Emulator::Bochs => "bochs",
            Emulator::QemuTcg => "qemu-tcg",
            Emulator::QemuKvm => "qemu-kvm",
        }
    }

    pub fn packages(self) -> &'static [Package] {
        match self {
            Emulator::Bochs => prereq::BOCHS_PACKAGES,
            Emulator::QemuTcg | Emulator::QemuKvm => prereq::QEMU_PACKAGES,
        }
    }

    /// A bound on one boot that is far above what it takes here (Bochs: 15-60 s to power-off).
    pub fn default_timeout(self) -> Duration {
        Duration::from_secs(match self {
            Emulator::Bochs => 300,
            Emulator::QemuTcg => 120,
            Emulator::QemuKvm => 60,
        })
    }

    /// What to tell the user while waiting.
    pub fn expected_wall_time(self) -> &'static str {
        match self {
            Emulator::Bochs => "about 15-60 s",
            Emulator::QemuTcg => "about 10 s",
            Emulator::QemuKvm => "a few seconds",
        }
    }

    /// How long the emulator gets to exit by itself once the run is done (Bochs needs the kernel's
    /// last UART bytes and its own shutdown; QEMU exits at once on isa-debug-exit).
    pub fn exit_grace(self) -> Duration {
        Duration::from_secs(match self {
            Emulator::Bochs => 10,
            Emulator::QemuTcg | Emulator::QemuKvm => 5,
        })
    }
}

/// The MAC address of Bochs' e1000 (QEMU's default, 52:54:00 being its locally administered prefix).
pub const BOCHS_E1000_MAC: &str = "52:54:00:12:34:56";

/// The Bochs configuration: /work/shared/reference/bochs-uefi.bxrc with this run's paths.
/// Deterministic time (`clock: sync=none`, fixed `time0`, `vga realtime=0`) makes two runs of one
/// image give the same output and TSC values. COM2 (IRQ 3) is the device whose interrupts guests take
/// (its output goes nowhere).
///
/// Every run has an Intel 82540EM e1000 (8086:100e) in PCI slot 1, which the i440FX machine makes
/// 00:02.0 (INTA, routed by OVMF to IRQ 10; no MSI), on Bochs' `vnet` backend: a host inside Bochs
/// at 192.168.10.1 answering ARP, ping, DHCP (the guest gets 192.168.10.15) and TFTP from `vnet_root`
/// (see [`ensure_vnet_root`]). Nothing leaves the emulator. Memory is 1 GiB: a Linux guest of
/// 128-256 MiB plus its 63 MiB vmlinux module (the loader reads every module into memory) does not
/// fit in 512 MiB next to OVMF and the hypervisor. Bochs allocates guest memory lazily, so the
/// process's resident size grows only with what is touched.
pub fn bxrc(image: &Path, serial: &Path, log: &Path, vnet_root: &Path) -> String {
    format!(
        "\
plugin_ctrl: biosdev=true, busmouse=false, e1000=true, es1370=false, extfpuirq=true, parallel=true, sb16=false, serial=true, speaker=false, unmapped=true, usb_ehci=false, usb_ohci=false, usb_uhci=false, usb_xhci=false, voodoo=false
config_interface: textconfig
display_library: term
memory: host=1024, guest=1024
romimage: file=\"{rom}\", address=0xffe00000, options=none
vgaromimage: file=\"{vga}\"
boot: disk
ata0: enabled=true, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=disk, path=\"{image}\", mode=flat
pci: enabled=1, chipset=i440fx, slot1=e1000
e1000: enabled=1, mac={mac}, ethmod=vnet, ethdev=\"{vnet}\"
vga: extension=vbe, update_freq=5, realtime=0, ddc=builtin
cpu: count=1, ips=50000000, model=tigerlake, reset_on_triple_fault=0, cpuid_limit_winnt=0, ignore_bad_msrs=1, mwait_is_nop=0
clock: sync=none, time0=946684800, rtc_sync=0
log: \"{log}\"
debug: action=ignore
info: action=report
error: action=report
panic: action=report
com1: enabled=true, mode=file, dev=\"{serial}\"
com2: enabled=true, mode=null
port_e9_hack: enabled=1
",
        rom = prereq::BOCHS_ROM,
        vga = prereq::VGA_ROM,
        image = image.display(),
        log = log.display(),
        serial = serial.display(),
        mac = BOCHS_E1000_MAC,
        vnet = vnet_root.display(),
    )
}

/// The size of `bulk.bin` in the vnet root.
pub const VNET_BULK_BYTES: usize = 1 << 20;

/// The bytes of `bulk.bin`, which Bochs' vnet serves by TFTP (a later bench fetches it): a
/// 32-bit xorshift stream (Marsaglia 2003, shifts 13, 17, 5) from seed 0x2545F491, little-endian,
/// so a guest can check what it got without the file being compressible or periodic.
pub fn vnet_bulk_bytes() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    let mut out = Vec::with_capacity(VNET_BULK_BYTES);
    while out.len() < VNET_BULK_BYTES {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The directory Bochs' vnet serves by TFTP (`ethdev`): `target/xtask/vnet-root/`, made with
/// `bulk.bin` in it. Shared by all runs; written through a rename so a running Bochs never sees
/// half a file.
pub fn ensure_vnet_root() -> Result<PathBuf> {
    let dir = crate::paths::xtask_dir().join("vnet-root");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bulk = dir.join("bulk.bin");
    let want = vnet_bulk_bytes();
    if fs::read(&bulk).ok().as_deref() != Some(want.as_slice()) {
        let tmp = dir.join(format!(".bulk.bin.{}", std::process::id()));
        fs::write(&tmp, &want).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &bulk).with_context(|| format!("writing {}", bulk.display()))?;
    }
    Ok(dir)
}

/// Two edus behind one PCIe-to-PCI bridge (behind a root port in slot 9, so the devices above keep
/// their slots): both reach VT-d with the requester ID secondary-bus:00.0 (PCIe-to-PCI bridge spec
/// 1.0 §2.3; QEMU's `pci_device_iommu_address_space` aliases them so), so the kernel must refuse to
/// give them to two guests. Firmware numbers the buses: root port 00:09.0 leads to bus 1, the bridge
/// 01:00.0 to bus 2, so the edus are 02:01.0 and 02:02.0 with requester ID 02:00.0, a devfn
/// no function holds. TCG only: the refusal is proven there, and the nested-KVM boot
/// keeps the machine its guests are written for.
const SHARED_REQUESTER_ID_DEVICES: [&str; 8] = [
    "-device",
    "pcie-root-port,id=rp1,bus=pcie.0,addr=0x9,chassis=1",
    "-device",
    "pcie-pci-bridge,id=br1,bus=rp1",
    "-device",
    "edu,bus=br1,addr=0x1",
    "-device",
    "edu,bus=br1,addr=0x2",
];

/// The QEMU command line (after the program name) for TCG or nested KVM.
pub fn qemu_args(emulator: Emulator, image: &Path, vars: &Path, serial: &Path) -> Vec<String> {
    let mut args: Vec<String> = match emulator {
        Emulator::QemuKvm => [
            "-machine",
            "q35,kernel-irqchip=split",
            "-accel",
            "kvm",
            "-cpu",
            "host,+x2apic,+vmx",
            "-m",
            "512",
            "-smp",
            "1",
            // The IOMMU must come before the PCI devices it translates for.
            "-device",
            "intel-iommu,intremap=on,eim=on,caching-mode=on",
        ]
        .map(String::from)
        .to_vec(),
        _ => [
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "512",
            "-smp",
            "1",
            "-device",
            "intel-iommu,intremap=on",
        ]
        .map(String::from)
        .to_vec(),
    };
    args.extend([
        // The edu at 00:03.0 (the slot q35 would give it anyway, after VGA and the default NIC):
        // guest configurations assign it by that address.
        "-device".into(),
        "edu,addr=0x3".into(),
        // A second edu, in its own slot so the other devices keep theirs: the vtd self-test puts
        // the two in two domains to show they cannot reach each other's memory.
        "-device".into(),
        "edu,addr=0x8".into(),
    ]);
    if emulator == Emulator::QemuTcg {
        args.extend(SHARED_REQUESTER_ID_DEVICES.map(String::from));
    }
    args.extend([
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            prereq::OVMF_CODE
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        "-drive".into(),
        format!("if=none,id=esp,format=raw,file={}", image.display()),
        "-device".into(),
        "virtio-blk-pci,drive=esp".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
    ]);
    args
}

/// One boot to perform.
pub struct BootRequest<'a> {
    pub emulator: Emulator,
    /// The run directory: the image is here, logs and configuration go here.
    pub dir: &'a Path,
    pub image: &'a Path,
    pub timeout: Duration,
    /// Copy the serial console to stdout as it arrives.
    pub echo: bool,
    /// True once the serial log shows the run is over (e.g. a POWEROFF line).
    pub done: &'a dyn Fn(&str) -> bool,
    /// How long the emulator may keep running after `done` before it is killed.
    pub grace: Duration,
}

/// How a boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `done` became true; the emulator then exited by itself (Some) or was killed (None).
    Done { exit: Option<ExitStatus> },
    /// The emulator exited before `done` became true.
    Exited(ExitStatus),
    /// Neither happened before the timeout; the emulator was killed.
    TimedOut(Duration),
}

#[derive(Clone, Debug)]
pub struct BootOutput {
    pub serial: String,
    pub serial_path: PathBuf,
    /// The emulator's own output and log, for failure messages.
    pub emulator_log: PathBuf,
    pub ending: Ending,
    pub elapsed: Duration,
}

impl BootOutput {
    /// A one-line description of how the run ended.
    pub fn describe_ending(&self) -> String {
        match &self.ending {
            Ending::Done { exit: Some(s) } => format!("emulator exited ({s})"),
            Ending::Done { exit: None } => "emulator killed after the run was done".into(),
            Ending::Exited(s) => format!(
                "emulator exited ({s}) before the run was done; see {}",
                crate::paths::display(&self.emulator_log)
            ),
            Ending::TimedOut(t) => format!("timed out after {} s", t.as_secs()),
        }
    }
}

/// Runs one boot to its end and returns the serial log. The emulator is gone when this returns.
pub fn boot(req: &BootRequest<'_>) -> Result<BootOutput> {
    fs::create_dir_all(req.dir)?;
    let serial_path = req.dir.join("serial.log");
    remove_if_present(&serial_path)?;
    let (mut command, emulator_log, _bochs_lock) = match req.emulator {
        Emulator::Bochs => {
            let lock = BochsLock::acquire()?;
            let log = req.dir.join("bochs.log");
            let bxrc_path = req.dir.join("bochs.bxrc");
            let rc_path = req.dir.join("bochs.rc");
            let vnet_root = ensure_vnet_root()?;
            fs::write(&bxrc_path, bxrc(req.image, &serial_path, &log, &vnet_root))?;
            // Bochs' debugger reads this at start-up: `c` = continue.
            fs::write(&rc_path, "c\n")?;
            remove_if_present(&bochs_disk_lock(req.image))?;
            let mut command = Command::new("bochs");
            command
                .arg("-q")
                .arg("-f")
                .arg(&bxrc_path)
                .arg("-rc")
                .arg(&rc_path)
                // The term display needs a terminal type even though its output goes to a file.
                .env("TERM", "xterm");
            (command, log, Some(lock))
        }
        Emulator::QemuTcg | Emulator::QemuKvm => {
            let vars = req.dir.join("OVMF_VARS.fd");
            fs::copy(prereq::OVMF_VARS, &vars)
                .with_context(|| format!("copying {}", prereq::OVMF_VARS))?;
            let mut command = Command::new("qemu-system-x86_64");
            command.args(qemu_args(req.emulator, req.image, &vars, &serial_path));
            (command, req.dir.join("emulator.out"), None)
        }
    };
    let console_path = req.dir.join("emulator.out");
    let console = File::create(&console_path)?;
    command
        .current_dir(req.dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (setsid,
    // prctl, getppid, _exit) and touches no locks or allocations.
    unsafe {
        command.pre_exec(move || {
            // Own session: no controlling terminal, no signals from the user's terminal.
            libc::setsid();
            // Killed by the kernel if xtask dies first (Ctrl-C, SIGKILL).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", req.emulator.label()))?;
    let mut running = Running {
        child,
        disk_lock: (req.emulator == Emulator::Bochs).then(|| bochs_disk_lock(req.image)),
    };
    let started = Instant::now();
    let mut tail = SerialTail::new(&serial_path, req.echo);

    let ending = loop {
        tail.poll()?;
        if (req.done)(&tail.text()) {
            break Ending::Done {
                exit: running.wait_for_exit(req.grace)?,
            };
        }
        if let Some(status) = running.child.try_wait()? {
            tail.poll()?;
            break if (req.done)(&tail.text()) {
                Ending::Done { exit: Some(status) }
            } else {
                Ending::Exited(status)
            };
        }
        if started.elapsed() >= req.timeout {
            break Ending::TimedOut(req.timeout);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(running);
    tail.poll()?;
    Ok(BootOutput {
        serial: tail.text(),
        serial_path,
        emulator_log: if req.emulator == Emulator::Bochs {
            emulator_log
        } else {
            console_path
        },
        ending,
        elapsed: started.elapsed(),
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Bochs locks a flat disk image by creating `IMAGE.lock` beside it; a killed Bochs leaves it.
fn bochs_disk_lock(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A started emulator; dropping it kills it (SIGKILL to its whole session) and cleans up.
struct Running {
    child: Child,
    disk_lock: Option<PathBuf>,
}

impl Running {
    /// Waits up to `grace` for the emulator to exit by itself; returns its status if it did.
    fn wait_for_exit(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        let until = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill has no memory-safety preconditions. The child leads its own process
            // group (setsid), so -pid reaches anything it started too.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        if let Some(lock) = &self.disk_lock {
            let _ = fs::remove_file(lock);
        }
    }
}

/// Follows the serial log file as the emulator writes it.
struct SerialTail {
    path: PathBuf,
    file: Option<File>,
    bytes: Vec<u8>,
    echo: bool,
    escapes: EscapeFilter,
}

impl SerialTail {
    fn new(path: &Path, echo: bool) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            bytes: Vec::new(),
            echo,
            escapes: EscapeFilter::default(),
        }
    }

    fn poll(&mut self) -> Result<()> {
        if self.file.is_none() {
            // The emulator creates the file when it starts.
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let before = self.bytes.len();
        file.seek(SeekFrom::Start(before as u64))?;
        file.read_to_end(&mut self.bytes)?;
        if self.echo && self.bytes.len() > before {
            let shown = self.escapes.filter(&self.bytes[before..]);
            let mut out = std::io::stdout().lock();
            out.write_all(&shown)?;
            out.flush()?;
        }
        Ok(())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Drops ANSI escape sequences (ESC, and CSI sequences up to their final byte 0x40..=0x7E, ECMA-48
/// s5.4) from what is echoed: OVMF clears the screen and sets colours, which would wipe the user's
/// terminal. The log file keeps them. Sequences may be split across reads, hence the state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum EscapeFilter {
    #[default]
    Text,
    Escape,
    Csi,
}

impl EscapeFilter {
    fn filter(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            *self = match (*self, b) {
                (EscapeFilter::Text, 0x1b) => EscapeFilter::Escape,
                (EscapeFilter::Text, _) => {
                    out.push(b);
                    EscapeFilter::Text
                }
                (EscapeFilter::Escape, b'[') => EscapeFilter::Csi,
                (EscapeFilter::Escape, _) => EscapeFilter::Text,
                (EscapeFilter::Csi, 0x40..=0x7e) => EscapeFilter::Text,
                (EscapeFilter::Csi, _) => EscapeFilter::Csi,
            };
        }
        out
    }
}

/// The machine-wide lock that keeps to one Bochs at a time (two at once on 2 cores slow each
/// by ~45%). `EXITLESS_BOCHS_LOCK` names another lock file (default /tmp/exitless-bochs.lock).
pub struct BochsLock {
    _file: File,
}

impl BochsLock {
    pub fn path() -> PathBuf {
        std::env::var_os("EXITLESS_BOCHS_LOCK")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/exitless-bochs.lock"))
    }

    pub fn acquire() -> Result<Self> {
        let path = Self::path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!(
                    "xtask: waiting for another Bochs run (lock {})",
                    path.display()
                );
                file.lock()?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bxrc_points_bochs_at_this_run() {
        let text = bxrc(
            Path::new("/r/exitless.img"),
            Path::new("/r/serial.log"),
            Path::new("/r/bochs.log"),
            Path::new("/t/vnet-root"),
        );
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} line"))
        };
        assert_eq!(
            line("ata0-master:"),
            "ata0-master: type=disk, path=\"/r/exitless.img\", mode=flat"
        );
        assert_eq!(
            line("com1:"),
            "com1: enabled=true, mode=file, dev=\"/r/serial.log\""
        );
        assert_eq!(line("log:"), "log: \"/r/bochs.log\"");
        assert_eq!(line("display_library:"), "display_library: term");
        assert!(line("cpu:").contains("model=tigerlake"));
        assert!(line("clock:").contains("sync=none") && line("clock:").contains("time0=946684800"));
        assert!(line("vga:").contains("realtime=0"));
        assert_eq!(line("port_e9_hack:"), "port_e9_hack: enabled=1");
        assert_eq!(line("memory:"), "memory: host=1024, guest=1024");
        // The e1000 at 00:02.0 on vnet, its plugin loaded.
        assert_eq!(line("pci:"), "pci: enabled=1, chipset=i440fx, slot1=e1000");
        assert_eq!(
            line("e1000:"),
            "e1000: enabled=1, mac=52:54:00:12:34:56, ethmod=vnet, ethdev=\"/t/vnet-root\""
        );
        assert!(line("plugin_ctrl:").contains(" e1000=true,"));
        assert!(line("romimage:").contains("/usr/share/ovmf/OVMF.fd"));
    }

    #[test]
    fn bulk_file_is_a_fixed_incompressible_mebibyte() {
        let bytes = vnet_bulk_bytes();
        assert_eq!(bytes.len(), VNET_BULK_BYTES);
        // The first xorshift32 outputs from 0x2545F491, pinned so a guest-side check stays valid.
        assert_eq!(&bytes[..4], &0xe124_b63au32.to_le_bytes());
        assert_eq!(bytes, vnet_bulk_bytes());
        // Not periodic at any small stride.
        assert!((1..4096).all(|p| bytes[..4096] != bytes[p..p + 4096]));
    }

    #[test]
    fn qemu_tcg_and_kvm_command_lines() {
        let tcg = qemu_args(
            Emulator::QemuTcg,
            Path::new("/r/x.img"),
            Path::new("/r/VARS.fd"),
            Path::new("/r/serial.log"),
        )
        .join(" ");
        assert!(tcg.starts_with("-machine q35 -accel tcg -cpu max -m 512 -smp 1 -device intel-iommu,intremap=on -device edu,addr=0x3 -device edu,addr=0x8 "));
        // Root port, PCIe-to-PCI bridge on it, two edus on the bridge's (conventional) bus.
        assert!(tcg.contains(
            "-device pcie-root-port,id=rp1,bus=pcie.0,addr=0x9,chassis=1 \
             -device pcie-pci-bridge,id=br1,bus=rp1 \
             -device edu,bus=br1,addr=0x1 -device edu,bus=br1,addr=0x2 "
        ));
        assert!(tcg.contains(
            "-drive if=none,id=esp,format=raw,file=/r/x.img -device virtio-blk-pci,drive=esp"
        ));
        assert!(tcg.contains("unit=1,file=/r/VARS.fd"));
        assert!(tcg.contains("-serial file:/r/serial.log -display none -monitor none -no-reboot"));
        assert!(tcg.ends_with("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        let kvm = qemu_args(
            Emulator::QemuKvm,
            Path::new("/r/x.img"),
            Path::new("/r/VARS.fd"),
            Path::new("/r/serial.log"),
        )
        .join(" ");
        assert!(kvm.starts_with(
            "-machine q35,kernel-irqchip=split -accel kvm -cpu host,+x2apic,+vmx -m 512 -smp 1 -device intel-iommu,intremap=on,eim=on,caching-mode=on -device edu,addr=0x3 "
        ));
        assert!(!kvm.contains("pcie-pci-bridge"));
    }

    #[test]
    fn escape_sequences_are_dropped_even_when_split() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.filter(b"\x1b[2J\x1b[01;01HBdsDxe: ok\r\n"),
            b"BdsDxe: ok\r\n"
        );
        assert_eq!(f.filter(b"a\x1b[1"), b"a");
        assert_eq!(f.filter(b"m\x1b[37mb"), b"b");
        assert_eq!(f.filter(b"\x1b"), b"");
        assert_eq!(f.filter(b"=3hc"), b"3hc");
    }

    #[test]
    fn disk_lock_sits_beside_the_image() {
        assert_eq!(
            bochs_disk_lock(Path::new("/r/exitless.img")),
            PathBuf::from("/r/exitless.img.lock")
        );
    }
}
