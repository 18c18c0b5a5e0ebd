//! File-valued guest settings in a user's configuration: `image`, `linux` and `initrd` may name a
//! file on the build machine, which xtask copies onto the ESP and replaces with its ESP path.
//!
//! The kernel reads modules the loader put in memory: every file directly in `\exitless\` and in
//! `\exitless\guests\` (the loader lists no deeper directory), named by their path relative to
//! `\exitless\`. So a host file for guest `G` becomes `\exitless\guests\G-<file name>`, and the
//! line `linux = /home/me/vmlinux` becomes `linux = guests/G-vmlinux`. A value that is already a
//! module the image carries (`image = guests/basic.elf`) is kept as it is, and wins over a host
//! file of the same relative name. Anything else is refused with the line and the path tried.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use exitless_abi::config_text::{items, Item};

use crate::image::{EspFile, GUESTS_DIR};

/// The guest settings whose value is a file.
pub const FILE_KEYS: [&str; 3] = ["image", "linux", "initrd"];

/// A configuration with its host files resolved.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The text to write to the image: each host-file value replaced by its ESP path.
    pub text: String,
    /// The host files, as ESP files (`exitless/guests/...`).
    pub files: Vec<EspFile>,
}

/// Resolves the file-valued settings of `text`. Relative host paths are relative to `base` (the
/// configuration file's directory); `carried` lists the modules the image holds anyway, relative
/// to `\exitless\` (e.g. `guests/basic.elf`).
pub fn resolve(text: &str, base: &Path, carried: &[String]) -> Result<Resolved> {
    let mut replacements: Vec<(usize, String, String)> = Vec::new();
    let mut files: Vec<(EspFile, PathBuf, String)> = Vec::new();
    let mut guest: Option<&str> = None;
    for (line_no, item) in items(text) {
        match item {
            Item::Section { kind, name } => {
                guest = (kind == "guest").then_some(name);
            }
            Item::Setting { key, value } if FILE_KEYS.contains(&key) => {
                let Some(guest) = guest else { continue };
                let line = format!("line {line_no}: `{key} = {value}` in [guest {guest}]");
                if is_carried(value, carried) {
                    continue;
                }
                let host = if Path::new(value).is_absolute() {
                    PathBuf::from(value)
                } else {
                    base.join(value)
                };
                if !host.is_file() {
                    bail!(
                        "{line}: no such file: {} (a file value is a file on this machine, absolute or relative to {}, or a module the image carries: {})",
                        host.display(),
                        base.display(),
                        carried.join(", ")
                    );
                }
                // One copy of a file however many guests name it (a 63 MiB vmlinux, say): the
                // loader reads every module into memory.
                if let Some((_, _, module)) = files.iter().find(|(_, from, _)| *from == host) {
                    replacements.push((line_no, format!("{key} = {module}"), value.to_string()));
                    continue;
                }
                let data = fs::read(&host)
                    .map_err(|e| anyhow::anyhow!("{line}: cannot read {}: {e}", host.display()))?;
                let file_name = host.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                    anyhow::anyhow!("{line}: {} has no UTF-8 file name", host.display())
                })?;
                if guest.contains(['/', '\\']) {
                    bail!("{line}: a guest whose name has a slash cannot have files copied for it");
                }
                let module = format!("guests/{guest}-{file_name}");
                if exitless_abi::boot_info::Module::encode_name(&module).is_none() {
                    bail!(
                        "{line}: the file would be the module `{module}`, longer than the loader's 63 bytes: shorten the guest name or the file name"
                    );
                }
                let esp_path = format!("{}/{}", GUESTS_DIR, &module["guests/".len()..]);
                if let Some((_, from, _)) = files
                    .iter()
                    .find(|(f, _, _)| f.path.eq_ignore_ascii_case(&esp_path))
                {
                    bail!(
                        "{line}: {} and {} would both be {module} on the ESP: rename one of them",
                        from.display(),
                        host.display()
                    );
                }
                files.push((
                    EspFile {
                        path: esp_path,
                        data,
                    },
                    host.clone(),
                    module.clone(),
                ));
                replacements.push((line_no, format!("{key} = {module}"), value.to_string()));
            }
            _ => {}
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, raw) in text.lines().enumerate() {
        match replacements.iter().find(|(n, _, _)| *n == i + 1) {
            // The original value stays as a comment: it is what the user wrote, so the image is
            // still the same wherever the checkout lives (for relative paths).
            Some((_, line, was)) => out.push_str(&format!("{line}  # from {was}\n")),
            None => {
                out.push_str(raw);
                out.push('\n');
            }
        }
    }
    Ok(Resolved {
        text: out,
        files: files.into_iter().map(|(f, _, _)| f).collect(),
    })
}

/// Whether `value` names a module the image carries (FAT names are case-insensitive; `\` or `/`).
fn is_carried(value: &str, carried: &[String]) -> bool {
    let value = value.replace('\\', "/");
    carried.iter().any(|c| c.eq_ignore_ascii_case(&value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried() -> Vec<String> {
        vec!["guests/basic.elf".into(), "guests/irq.elf".into()]
    }

    #[test]
    fn host_files_are_copied_and_their_lines_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let kit = dir.path().join("kit");
        fs::create_dir(&kit).unwrap();
        fs::write(kit.join("vmlinux"), b"\x7fELF kernel").unwrap();
        fs::write(kit.join("initrd.cpio"), b"070701...").unwrap();
        let absolute = kit.join("vmlinux");
        let text = format!(
            "kernel = hypervisor.elf\n\n[guest basic]\nimage = guests/basic.elf\n\n\
             [guest linux]\nlinux = {}\ninitrd = kit/initrd.cpio   # relative to the config\n\
             cmdline = console=ttyS0 quiet\nmemory_mib = 256\n",
            absolute.display()
        );
        let r = resolve(&text, dir.path(), &carried()).unwrap();
        let lines: Vec<&str> = r.text.lines().collect();
        assert_eq!(lines[3], "image = guests/basic.elf");
        assert_eq!(
            lines[6],
            format!(
                "linux = guests/linux-vmlinux  # from {}",
                absolute.display()
            )
        );
        assert_eq!(
            lines[7],
            "initrd = guests/linux-initrd.cpio  # from kit/initrd.cpio"
        );
        assert_eq!(lines[8], "cmdline = console=ttyS0 quiet");
        assert_eq!(r.text.lines().count(), text.lines().count());
        assert_eq!(
            r.files,
            vec![
                EspFile {
                    path: "exitless/guests/linux-vmlinux".into(),
                    data: b"\x7fELF kernel".to_vec(),
                },
                EspFile {
                    path: "exitless/guests/linux-initrd.cpio".into(),
                    data: b"070701...".to_vec(),
                },
            ]
        );
        // What the kernel will parse: the ESP paths.
        let values: Vec<(&str, &str)> = items(&r.text)
            .filter_map(|(_, i)| match i {
                Item::Setting { key, value } if FILE_KEYS.contains(&key) => Some((key, value)),
                _ => None,
            })
            .collect();
        assert_eq!(
            values,
            [
                ("image", "guests/basic.elf"),
                ("linux", "guests/linux-vmlinux"),
                ("initrd", "guests/linux-initrd.cpio"),
            ]
        );
    }

    #[test]
    fn a_file_several_guests_name_is_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vmlinux"), b"\x7fELF kernel").unwrap();
        let text = "[guest a]\nlinux = vmlinux\n[guest b]\nlinux = vmlinux\n";
        let r = resolve(text, dir.path(), &carried()).unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].path, "exitless/guests/a-vmlinux");
        let lines: Vec<&str> = r.text.lines().collect();
        assert_eq!(lines[1], "linux = guests/a-vmlinux  # from vmlinux");
        assert_eq!(lines[3], "linux = guests/a-vmlinux  # from vmlinux");
    }

    #[test]
    fn carried_modules_win_and_keep_working_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        // A host file of the same relative name does not replace the image's own module.
        fs::create_dir(dir.path().join("guests")).unwrap();
        fs::write(dir.path().join("guests/basic.elf"), b"other").unwrap();
        let text = "[guest a]\nimage = guests/basic.elf\n[guest b]\nimage = GUESTS\\IRQ.ELF\n";
        let r = resolve(text, dir.path(), &carried()).unwrap();
        assert_eq!(r.text, text);
        assert!(r.files.is_empty());
    }

    #[test]
    fn a_missing_file_is_refused_with_its_line_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "emulator_exit = yes\n[guest linux]\nmemory_mib = 128\nlinux = nowhere/vmlinux\n";
        let err = resolve(text, dir.path(), &carried())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 4: `linux = nowhere/vmlinux` in [guest linux]"),
            "{err}"
        );
        assert!(
            err.contains(&dir.path().join("nowhere/vmlinux").display().to_string()),
            "{err}"
        );
        assert!(err.contains("guests/basic.elf"), "{err}");
        // A directory is not a file either.
        fs::create_dir(dir.path().join("adir")).unwrap();
        let err = resolve("[guest g]\ninitrd = adir\n", dir.path(), &carried()).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn two_files_with_one_esp_name_are_refused_and_non_guest_keys_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a", "b"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
            fs::write(dir.path().join(sub).join("k"), sub.as_bytes()).unwrap();
        }
        let err = resolve("[guest g]\nlinux = a/k\ninitrd = b/k\n", dir.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rename one"), "{err}");
        // The same file twice is one copy.
        let r = resolve("[guest g]\nlinux = a/k\ninitrd = a/k\n", dir.path(), &[]).unwrap();
        assert_eq!(r.files.len(), 1);
        // Top-level keys and other sections are not guest files.
        let text = "image = whatever\n[other x]\nimage = nothing\n";
        assert_eq!(resolve(text, dir.path(), &[]).unwrap().text, text);
    }

    #[test]
    fn a_name_too_long_for_the_loader_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let long = "k".repeat(60);
        fs::write(dir.path().join(&long), b"x").unwrap();
        let err = resolve(&format!("[guest g]\nlinux = {long}\n"), dir.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("63 bytes"), "{err}");
    }
}
