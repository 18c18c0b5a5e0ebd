//! `cargo xtask linux-kit`: what a Linux guest boots with, from Debian 12's own packages.
//!
//! [`ensure`] downloads the newest `linux-image-6.1.0-N-amd64` (the ABI `linux-image-amd64` depends
//! on) and `busybox-static` with `apt-get download` into `target/linux-kit/debs/`, takes the bzImage
//! and the e1000 module out of the kernel package, decompresses the vmlinux inside the bzImage
//! ([`bzimage`]) and writes an initramfs ([`cpio`]) whose `/init` (`xtask/linux-kit/init`) runs the
//! guest's tests: CPU flags, timer lines, interrupts, then the e1000 with DHCP and ping, and powers off.
//!
//! Everything is cached: a second run with the packages present downloads nothing, and each output is
//! rewritten only when what it is made from changed (a stamp file beside it holds a hash of its
//! inputs). Outputs, in `target/linux-kit/`:
//!
//! | file | what |
//! | --- | --- |
//! | `bzImage` | the kernel as Debian ships it (`/boot/vmlinuz-RELEASE`) |
//! | `vmlinux` | the uncompressed ELF64 kernel inside it (loading it skips the guest's own decompression) |
//! | `initrd.cpio` | the initramfs, an uncompressed cpio newc archive |
//! | `e1000.ko` | the Intel PRO/1000 driver module (also inside the initramfs) |
//! | `VERSION` | the package names and versions, and the kernel release |

pub mod bzimage;
pub mod cpio;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::paths;

/// The metapackage whose dependency names the newest kernel ABI (`linux-image-6.1.0-N-amd64`).
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The guest's `/init` and udhcpc's event script, kept as files so they read as shell scripts.
pub const INIT_SCRIPT: &str = include_str!("../../linux-kit/init");
pub const UDHCPC_SCRIPT: &str = include_str!("../../linux-kit/udhcpc.script");

/// The busybox applets the initramfs links to `/bin/busybox`: what `/init` and its udhcpc script
/// run, plus what a person or a later benchmark wants at a shell (tftp, ftpget, time, md5sum...).
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "mount",
    "umount",
    "cat",
    "grep",
    "sed",
    "awk",
    "cut",
    "head",
    "tail",
    "wc",
    "tr",
    "ls",
    "mkdir",
    "rm",
    "echo",
    "printf",
    "test",
    "[",
    "true",
    "false",
    "sleep",
    "uname",
    "dmesg",
    "insmod",
    "lsmod",
    "rmmod",
    "ip",
    "ifconfig",
    "route",
    "udhcpc",
    "ping",
    "tftp",
    "ftpget",
    "wget",
    "nc",
    "time",
    "date",
    "dd",
    "md5sum",
    "sha256sum",
    "sync",
    "poweroff",
    "reboot",
    "halt",
];

/// Bumped when the initramfs layout changes in a way the stamp's inputs do not show.
const INITRD_LAYOUT: &str = "exitless initramfs layout 1";

/// Where the kit lives: `target/linux-kit/` in the workspace.
pub fn kit_dir() -> PathBuf {
    paths::workspace_root().join("target").join("linux-kit")
}

/// The kit's files and what they were made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxKit {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    /// The bzImage's first 32 KiB: a kernel the hypervisor must refuse ("bzImage truncated").
    pub truncated_bzimage: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    pub e1000_ko: PathBuf,
    pub version_file: PathBuf,
    /// e.g. `linux-image-6.1.0-57-amd64`.
    pub kernel_package: String,
    /// The package version, e.g. `6.1.192-3`.
    pub kernel_version: String,
    /// `uname -r` in the guest, e.g. `6.1.0-57-amd64`.
    pub kernel_release: String,
    pub busybox_version: String,
}

impl LinuxKit {
    /// The kit's file paths in `dir` (what [`ensure`] fills in).
    fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            bzimage: dir.join("bzImage"),
            truncated_bzimage: dir.join("bzImage-truncated"),
            vmlinux: dir.join("vmlinux"),
            initrd: dir.join("initrd.cpio"),
            e1000_ko: dir.join("e1000.ko"),
            version_file: dir.join("VERSION"),
            kernel_package: String::new(),
            kernel_version: String::new(),
            kernel_release: String::new(),
            busybox_version: String::new(),
        }
    }
}

/// The kit's paths, whether or not it has been made yet: for configurations that name its files
/// (`linux = <vmlinux>`, `initrd = <initrd>`) before [`ensure`] runs.
pub fn kit_paths() -> LinuxKit {
    LinuxKit::in_dir(&kit_dir())
}

/// Whether an image with this configuration boots a Linux guest (a guest with `linux = ...`),
/// so the kit must be made before it is written.
pub fn boots_linux(config: &crate::config::ImageConfig) -> bool {
    config
        .guests
        .iter()
        .any(|(_, settings)| settings.iter().any(|(key, _)| key == "linux"))
}

/// Makes sure the kit is complete and current, downloading and building only what is missing or
/// stale. The error says which step failed and what to do (a test harness reports it as the reason
/// its Linux tests are skipped).
pub fn ensure() -> Result<LinuxKit, String> {
    ensure_in(&kit_dir()).map_err(|e| format!("linux kit: {e:#}"))
}

fn say(text: &str) {
    eprintln!("xtask: linux-kit: {text}");
}

fn ensure_in(dir: &Path) -> Result<LinuxKit> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    // One xtask at a time builds the kit (a test run and a bench may start together).
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    if lock.try_lock().is_err() {
        say("waiting for another xtask that is building the kit");
        lock.lock()?;
    }
    let apt = Apt::check()?;

    let kernel_package = resolve_kernel_package(&apt, &debs)?;
    let kernel_deb = fetch(&apt, &kernel_package, &debs)?;
    let busybox_deb = fetch(&apt, BUSYBOX_PACKAGE, &debs)?;
    remove_other_debs(&debs, &[&kernel_deb.path, &busybox_deb.path]);

    let kernel_tree = extract(
        &kernel_deb.path,
        &dir.join("extract"),
        // Only what the kit uses: the whole package unpacks to ~400 MB.
        &["*/boot/vmlinuz-*", "*/intel/e1000/e1000.ko*"],
    )?;
    let busybox_tree = extract(&busybox_deb.path, &dir.join("extract"), &[])?;

    let mut kit = LinuxKit::in_dir(dir);
    let vmlinuz = find_file(&kernel_tree.join("boot"), |n| n.starts_with("vmlinuz-"))?;
    kit.kernel_release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    kit.kernel_package = kernel_deb.package;
    kit.kernel_version = kernel_deb.version;
    kit.busybox_version = busybox_deb.version;

    let bzimage = fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    write_if_changed(&kit.bzimage, &bzimage)?;
    write_if_changed(
        &kit.truncated_bzimage,
        &bzimage[..bzimage.len().min(32 << 10)],
    )?;

    // The vmlinux: decompressed again only when the bzImage changed (it takes a few seconds).
    let vmlinux_stamp = fingerprint(&[b"vmlinux from bzImage", &bzimage]);
    if !stamp_matches(&kit.vmlinux, &vmlinux_stamp) {
        say(&format!(
            "decompressing the vmlinux out of {} ({})",
            paths::display(&kit.bzimage),
            mib(bzimage.len())
        ));
        let started = Instant::now();
        let mut shown = 0;
        let vmlinux = bzimage::extract_vmlinux(&bzimage, &mut |n| {
            if n >= shown + (16 << 20) {
                shown = n;
                say(&format!("  ... {}", mib(n)));
            }
        })
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("extracting the vmlinux from {}", vmlinuz.display()))?;
        write_atomically(&kit.vmlinux, &vmlinux)?;
        write_stamp(&kit.vmlinux, &vmlinux_stamp)?;
        say(&format!(
            "vmlinux: {} ELF64 in {:.1} s",
            mib(vmlinux.len()),
            started.elapsed().as_secs_f64()
        ));
    }

    let e1000 = read_module(&find_module(&kernel_tree, "e1000")?)?;
    write_if_changed(&kit.e1000_ko, &e1000)?;
    let busybox_path = busybox_tree.join("bin/busybox");
    let busybox = fs::read(&busybox_path)
        .with_context(|| format!("reading {} from {BUSYBOX_PACKAGE}", busybox_path.display()))?;

    let initrd_stamp = fingerprint(&[
        INITRD_LAYOUT.as_bytes(),
        INIT_SCRIPT.as_bytes(),
        UDHCPC_SCRIPT.as_bytes(),
        APPLETS.join(" ").as_bytes(),
        &busybox,
        &e1000,
    ]);
    if !stamp_matches(&kit.initrd, &initrd_stamp) {
        let initrd = initramfs(&busybox, &e1000);
        write_atomically(&kit.initrd, &initrd)?;
        write_stamp(&kit.initrd, &initrd_stamp)?;
        say(&format!(
            "wrote {} ({})",
            paths::display(&kit.initrd),
            mib(initrd.len())
        ));
    }

    let version = format!(
        "kernel {} {} (release {})\nbusybox {BUSYBOX_PACKAGE} {}\n",
        kit.kernel_package, kit.kernel_version, kit.kernel_release, kit.busybox_version
    );
    write_if_changed(&kit.version_file, version.as_bytes())?;
    drop(lock);
    Ok(kit)
}

/// The initramfs: busybox and its applet links, the device node the kernel opens as the console
/// before devtmpfs is mounted (`init/main.c`: console_on_rootfs opens /dev/console), the mount
/// points, the e1000 module, udhcpc's script and `/init`.
pub fn initramfs(busybox: &[u8], e1000: &[u8]) -> Vec<u8> {
    let mut a = cpio::Archive::new();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "lib",
        "lib/modules",
        "usr",
        "usr/share",
    ] {
        a.dir(dir, 0o755);
    }
    a.dir("usr/share/udhcpc", 0o755)
        .dir("tmp", 0o1777)
        .char_dev("dev/console", 0o600, 5, 1)
        .char_dev("dev/null", 0o666, 1, 3)
        .file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    a.file("lib/modules/e1000.ko", 0o644, e1000)
        .file(
            "usr/share/udhcpc/default.script",
            0o755,
            UDHCPC_SCRIPT.as_bytes(),
        )
        .file("init", 0o755, INIT_SCRIPT.as_bytes());
    a.finish()
}

/// `cargo xtask linux-kit`: make the kit and say what it holds.
pub fn command() -> Result<()> {
    let kit = ensure().map_err(anyhow::Error::msg)?;
    println!(
        "Linux kit in {} (kernel {} {}, release {}; busybox {}):",
        paths::display(&kit.dir),
        kit.kernel_package,
        kit.kernel_version,
        kit.kernel_release,
        kit.busybox_version
    );
    for path in [
        &kit.bzimage,
        &kit.vmlinux,
        &kit.initrd,
        &kit.e1000_ko,
        &kit.version_file,
    ] {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("  {:<28} {:>10} bytes", paths::display(path), len);
    }
    Ok(())
}

/// How this machine runs apt: as root (it may update its lists) or not.
struct Apt {
    root: bool,
}

impl Apt {
    fn check() -> Result<Self> {
        for tool in ["apt-get", "apt-cache", "dpkg-deb", "tar"] {
            if which(tool).is_none() {
                bail!("`{tool}` is not installed: the kit is made from Debian packages with apt-get, dpkg-deb and tar (Debian 12)");
            }
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Ok(Self { root })
    }

    /// `apt-cache ARGS`, its stdout when it succeeded with output.
    fn cache(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("apt-cache").args(args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.trim().is_empty()).then_some(text)
    }

    /// `apt-cache ARGS`; when the package lists do not know the package, `apt-get update` first
    /// (as root; otherwise the error names the command).
    fn cache_or_update(&self, args: &[&str], package: &str) -> Result<String> {
        if let Some(text) = self.cache(args) {
            return Ok(text);
        }
        if !self.root {
            bail!("apt's package lists do not know {package}: run `sudo apt-get update` first");
        }
        say(&format!(
            "apt's package lists do not know {package}: running apt-get update"
        ));
        let status = Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get update")?;
        if !status.success() {
            bail!("`apt-get update` failed ({status}): is the network reachable?");
        }
        self.cache(args)
            .with_context(|| format!("apt knows no package {package} even after apt-get update"))
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The newest kernel package: what `linux-image-amd64` depends on. Without package lists (and not
/// root to update them) a kernel package already in the cache will do.
fn resolve_kernel_package(apt: &Apt, debs: &Path) -> Result<String> {
    let resolved = apt
        .cache_or_update(&["depends", KERNEL_METAPACKAGE], KERNEL_METAPACKAGE)
        .and_then(|text| {
            kernel_dependency(&text).with_context(|| {
                format!(
                    "`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image-6.1.0-N-amd64"
                )
            })
        });
    match (resolved, cached_kernel_deb(debs)) {
        (Ok(package), _) => Ok(package),
        (Err(e), Some(cached)) => {
            say(&format!("{e:#}; using the cached {cached}"));
            Ok(cached)
        }
        (Err(e), None) => Err(e),
    }
}

/// `Depends: linux-image-6.1.0-57-amd64` in `apt-cache depends` output.
fn kernel_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(String::from)
}

/// The package name of the newest kernel .deb in the cache.
fn cached_kernel_deb(debs: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(debs)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))
        .filter_map(|n| n.split('_').next().map(String::from))
        .collect();
    // linux-image-6.1.0-N-amd64: newest is the largest N.
    names.sort_by_key(|n| abi_number(n));
    names.pop()
}

fn abi_number(package: &str) -> u32 {
    package
        .trim_end_matches("-amd64")
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A downloaded package.
struct Deb {
    package: String,
    version: String,
    path: PathBuf,
}

/// The fields of a package's candidate in `apt-cache show --no-all-versions`.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    version: String,
    arch: String,
    size: u64,
}

fn parse_candidate(text: &str) -> Option<Candidate> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some(Candidate {
        version: field("Version:")?,
        arch: field("Architecture:")?,
        size: field("Size:")?.parse().ok()?,
    })
}

/// The file `apt-get download` writes: `PACKAGE_VERSION_ARCH.deb`, the version's `:` (an epoch)
/// written `%3a` as in a URI.
fn deb_file_name(package: &str, c: &Candidate) -> String {
    format!("{package}_{}_{}.deb", c.version.replace(':', "%3a"), c.arch)
}

/// The package's candidate .deb in `debs`, downloaded unless it is there at its full size. Offline
/// or without lists, a cached .deb of the package is used with a warning.
fn fetch(apt: &Apt, package: &str, debs: &Path) -> Result<Deb> {
    let cached = || -> Option<Deb> {
        let prefix = format!("{package}_");
        let mut names: Vec<String> = fs::read_dir(debs)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            .collect();
        names.sort();
        let name = names.pop()?;
        let version = name.split('_').nth(1)?.replace("%3a", ":");
        Some(Deb {
            package: package.into(),
            version,
            path: debs.join(name),
        })
    };
    let candidate = apt
        .cache_or_update(&["show", "--no-all-versions", package], package)
        .and_then(|text| {
            parse_candidate(&text).with_context(|| {
                format!("`apt-cache show {package}` has no Version, Architecture and Size")
            })
        });
    let candidate = match (candidate, cached()) {
        (Ok(c), _) => c,
        (Err(e), Some(deb)) => {
            say(&format!("{e:#}; using the cached {}", deb.path.display()));
            return Ok(deb);
        }
        (Err(e), None) => return Err(e),
    };
    let path = debs.join(deb_file_name(package, &candidate));
    if fs::metadata(&path).is_ok_and(|m| m.len() == candidate.size) {
        return Ok(Deb {
            package: package.into(),
            version: candidate.version,
            path,
        });
    }
    say(&format!(
        "downloading {package} {} ({}) with apt-get download into {}",
        candidate.version,
        mib(candidate.size as usize),
        paths::display(debs)
    ));
    let started = Instant::now();
    let mut command = Command::new("apt-get");
    command.current_dir(debs).arg("download");
    if apt.root {
        // apt drops to user _apt for downloads, who cannot write here: download as root, quietly.
        command.args(["-o", "APT::Sandbox::User=root"]);
    }
    let out = command
        .arg(format!("{package}={}", candidate.version))
        .stdin(Stdio::null())
        .output()
        .context("running apt-get download")?;
    let got = fs::metadata(&path).map(|m| m.len()).ok();
    if !out.status.success() || got != Some(candidate.size) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        let _ = fs::remove_file(&path);
        if let Some(deb) = cached() {
            say(&format!(
                "downloading {package} failed ({}); using the cached {}",
                last.unwrap_or("no message"),
                deb.path.display()
            ));
            return Ok(deb);
        }
        bail!(
            "`apt-get download {package}={}` failed ({}; {}): is the network reachable? (it needs Debian's package mirrors)",
            candidate.version,
            out.status,
            last.unwrap_or("no message")
        );
    }
    say(&format!(
        "downloaded {} in {:.1} s",
        path.file_name().unwrap_or_default().to_string_lossy(),
        started.elapsed().as_secs_f64()
    ));
    Ok(Deb {
        package: package.into(),
        version: candidate.version,
        path,
    })
}

/// Old versions of the packages would only take space.
fn remove_other_debs(debs: &Path, keep: &[&Path]) {
    let Ok(entries) = fs::read_dir(debs) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_deb = path.extension().is_some_and(|e| e == "deb");
        if is_deb && !keep.contains(&path.as_path()) {
            say(&format!("removing the old {}", paths::display(&path)));
            let _ = fs::remove_file(&path);
        }
    }
}

/// Unpacks `deb` (only the members matching `patterns`, or all) into `root/<deb's stem>/`, once:
/// a `.complete` marker says the tree is whole.
fn extract(deb: &Path, root: &Path, patterns: &[&str]) -> Result<PathBuf> {
    let stem = deb.file_stem().unwrap_or_default().to_string_lossy();
    let tree = root.join(&*stem);
    let marker = tree.join(".complete");
    if marker.exists() {
        return Ok(tree);
    }
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    say(&format!("unpacking {}", paths::display(deb)));
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("running dpkg-deb")?;
    let tar_status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&tree)
        .arg("--wildcards")
        .args(patterns)
        .stdin(dpkg.stdout.take().context("dpkg-deb's output")?)
        .status()
        .context("running tar")?;
    let dpkg_status = dpkg.wait()?;
    // tar stops reading once it has what it was asked for, so dpkg-deb may die of SIGPIPE then.
    if !tar_status.success() || (!dpkg_status.success() && patterns.is_empty()) {
        bail!(
            "unpacking {} failed (dpkg-deb {dpkg_status}, tar {tar_status}); delete it to download it again",
            deb.display()
        );
    }
    // Remove the old versions' trees.
    if let Ok(entries) = fs::read_dir(root) {
        let package = stem.split('_').next().unwrap_or_default().to_string();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != *stem && name.split('_').next() == Some(package.as_str()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    File::create(&marker)?;
    Ok(tree)
}

/// The one file in `dir` whose name satisfies `wanted`.
fn find_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no such file in {}", dir.display()),
        _ => bail!("{} holds several: {found:?}", dir.display()),
    }
}

/// `NAME.ko` or `NAME.ko.xz` under `lib/modules/*/kernel/` (or `usr/lib/modules/...`).
fn find_module(tree: &Path, name: &str) -> Result<PathBuf> {
    let mut pending = vec![tree.to_path_buf()];
    let wanted = [format!("{name}.ko"), format!("{name}.ko.xz")];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .is_some_and(|n| wanted.iter().any(|w| n == w.as_str()))
            {
                return Ok(path);
            }
        }
    }
    bail!(
        "the kernel package has no {name}.ko (looked under {})",
        tree.display()
    )
}

/// A module's bytes, decompressed when it is a `.ko.xz` (busybox insmod wants a plain ELF).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::new();
        lzma_rust2::XzReader::new(data.as_slice(), true)
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}", path.display()))?;
        return Ok(out);
    }
    Ok(data)
}

/// A 64-bit FNV-1a hash of `parts` (each prefixed with its length), as hex: only to notice that
/// an output's inputs changed.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for part in parts {
        add(&(part.len() as u64).to_le_bytes());
        add(part);
    }
    format!("{h:016x}")
}

fn stamp_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".stamp");
    PathBuf::from(name)
}

/// Whether `output` exists and was made from inputs with this fingerprint.
fn stamp_matches(output: &Path, stamp: &str) -> bool {
    output.exists() && fs::read_to_string(stamp_path(output)).is_ok_and(|s| s.trim() == stamp)
}

fn write_stamp(output: &Path, stamp: &str) -> Result<()> {
    fs::write(stamp_path(output), format!("{stamp}\n"))
        .with_context(|| format!("writing {}", stamp_path(output).display()))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn write_if_changed(path: &Path, data: &[u8]) -> Result<()> {
    let same = fs::metadata(path).is_ok_and(|m| m.len() == data.len() as u64)
        && fs::read(path).is_ok_and(|old| old == data);
    if same {
        return Ok(());
    }
    write_atomically(path, data)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_abi_comes_from_the_metapackage() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            kernel_dependency(text).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(kernel_dependency("linux-image-amd64\n"), None);
        assert_eq!(abi_number("linux-image-6.1.0-57-amd64"), 57);
        assert!(abi_number("linux-image-6.1.0-9-amd64") < abi_number("linux-image-6.1.0-10-amd64"));
    }

    #[test]
    fn the_candidate_and_its_file_name() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\n\
                    Size: 928188\nDescription: x\n";
        let c = parse_candidate(text).unwrap();
        assert_eq!(c.size, 928_188);
        assert_eq!(
            deb_file_name("busybox-static", &c),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
        assert_eq!(parse_candidate("Package: x\n"), None);
    }

    #[test]
    fn the_cached_kernel_is_the_newest_abi() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb",
            "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb",
            "busybox-static_1%3a1.35.0-4_amd64.deb",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            cached_kernel_deb(dir.path()).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
    }

    #[test]
    fn the_initramfs_holds_init_busybox_links_console_and_module() {
        let bytes = initramfs(b"\x7fELF busybox", b"\x7fELF e1000");
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "bin/busybox\0",
            "bin/sh\0",
            "bin/udhcpc\0",
            "dev/console\0",
            "lib/modules/e1000.ko\0",
            "usr/share/udhcpc/default.script\0",
            "init\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(name), "{name}");
        }
        // Directories come before what is in them (the kernel creates nothing on its own).
        let at = |name: &str| text.find(name).unwrap();
        assert!(at("usr/share/udhcpc\0") < at("usr/share/udhcpc/default.script\0"));
        assert!(at("lib/modules\0") < at("lib/modules/e1000.ko\0"));
        // 110 + 11 bytes of trailer header and name, padded to 124.
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn init_prints_the_markers_the_harness_reads() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        let first_command = INIT_SCRIPT
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .find(|l| l.starts_with("say "))
            .unwrap();
        assert_eq!(first_command, "say userspace");
        for marker in [
            "say \"e1000 ok\"",
            "say \"dhcp ok $addr\"",
            "say \"dhcp failed\"",
            "say \"ping ok",
            "say done",
            "insmod /lib/modules/e1000.ko",
            "ping -A -c \"${ping_count:-20}\"",
            "${ping_host:-192.168.10.1}",
            "poweroff -f",
        ] {
            assert!(INIT_SCRIPT.contains(marker), "{marker}");
        }
        // Every applet the scripts name is linked.
        for applet in [
            "mount", "grep", "dmesg", "insmod", "ip", "udhcpc", "ping", "poweroff", "sed",
        ] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
    }

    #[test]
    fn a_linux_guest_is_one_with_a_linux_setting() {
        use crate::config::ImageConfig;
        let kit = kit_paths();
        assert!(kit.vmlinux.ends_with("target/linux-kit/vmlinux"));
        assert!(kit.initrd.ends_with("target/linux-kit/initrd.cpio"));
        let vmlinux = kit.vmlinux.display().to_string();
        let linux = ImageConfig::emulator()
            .guest("basic", &[("image", "guests/basic.elf")])
            .guest("linux", &[("linux", &vmlinux), ("memory_mib", "256")]);
        assert!(boots_linux(&linux));
        let plain = ImageConfig::emulator().guest("basic", &[("image", "guests/basic.elf")]);
        assert!(!boots_linux(&plain));
    }

    #[test]
    fn stamps_decide_what_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.cpio");
        let a = fingerprint(&[b"init", b"busybox"]);
        assert_ne!(a, fingerprint(&[b"ini", b"tbusybox"]));
        assert!(!stamp_matches(&out, &a));
        write_atomically(&out, b"archive").unwrap();
        write_stamp(&out, &a).unwrap();
        assert!(stamp_matches(&out, &a));
        assert!(!stamp_matches(&out, &fingerprint(&[b"init2", b"busybox"])));
    }
}
