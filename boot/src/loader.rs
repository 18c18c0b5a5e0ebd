//! The loader proper: reads `\exitless\`, validates the kernel, and hands over to [`crate::handoff`]
//! or explains what is wrong and returns to the firmware.

use alloc::string::ToString;
use alloc::vec::Vec;
use core::time::Duration;

use exitless_abi::boot_info::Module;
use exitless_abi::config_text;
use exitless_abi::elf_image::{AddressWindow, ElfImage};
use uefi::prelude::*;

use crate::error::LoadError;
use crate::files::{ExitlessDir, LoadedFile};
use crate::{console, handoff, say};

const CONFIG_FILE: &str = "exitless.cfg";
const DEFAULT_KERNEL: &str = "hypervisor.elf";
/// How long an error stays on screen before control goes back to the firmware.
pub const ERROR_PAUSE: Duration = Duration::from_secs(3);

#[entry]
fn main() -> Status {
    console::init();
    say!(
        "Exitless UEFI loader {} (console mirrored on serial: {})",
        env!("CARGO_PKG_VERSION"),
        if console::conout_reaches_serial() {
            "by firmware"
        } else {
            "by loader"
        }
    );
    match load() {
        Ok(loaded) => handoff::start(loaded),
        Err(e) => fail(&e),
    }
}

/// Prints what went wrong and what to do, pauses, and returns the status for the firmware.
pub fn fail(e: &LoadError) -> Status {
    say!("error: {e}");
    say!("returning to the firmware in {} s", ERROR_PAUSE.as_secs());
    boot::stall(ERROR_PAUSE);
    e.status()
}

/// Everything read and validated while boot services still run.
pub struct Loaded {
    pub kernel: LoadedFile,
    pub modules: Vec<LoadedFile>,
}

/// A `kernel = ...` value must name a file under `\exitless\`, never leave it.
fn valid_kernel_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['/', '\\'])
        && name
            .split(['/', '\\'])
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn load() -> Result<Loaded, LoadError> {
    let mut dir = ExitlessDir::open()?;
    let config = dir.read(CONFIG_FILE)?;
    let kernel_name = {
        let text = core::str::from_utf8(config.bytes())
            .map_err(|_| LoadError::NotUtf8(CONFIG_FILE.to_string()))?;
        config_text::top_level(text, "kernel")
            .unwrap_or(DEFAULT_KERNEL)
            .replace('\\', "/")
    };
    if !valid_kernel_name(&kernel_name) {
        return Err(LoadError::BadKernelName(kernel_name));
    }
    let kernel = dir.read(&kernel_name)?;
    {
        let image =
            ElfImage::parse(kernel.bytes(), AddressWindow::UPPER_HALF).map_err(|error| {
                LoadError::BadKernel {
                    path: kernel_name.clone(),
                    error,
                }
            })?;
        say!(
            "kernel \\exitless\\{} ({} bytes): entry {:#x}, {} segments spanning {:#x}..{:#x}",
            kernel_name.replace('/', "\\"),
            kernel.len,
            image.entry(),
            image.segments().len(),
            image.span().start,
            image.span().end
        );
    }

    let mut modules = Vec::new();
    modules.push(config);
    for name in dir.list()? {
        // FAT names are case-insensitive.
        if name.eq_ignore_ascii_case(CONFIG_FILE) || name.eq_ignore_ascii_case(&kernel_name) {
            continue;
        }
        if Module::encode_name(&name).is_none() {
            return Err(LoadError::NameTooLong(name));
        }
        let file = dir.read(&name)?;
        modules.push(file);
    }
    for m in &modules {
        say!("module {} ({} bytes) at {:#x}", m.name, m.len, m.pages.phys);
    }
    Ok(Loaded { kernel, modules })
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("loader bug: {info}");
    handoff::abort_after_panic()
}
