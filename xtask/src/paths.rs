//! Where things live: the workspace root and xtask's own output under `target/xtask/`.

use std::path::{Path, PathBuf};

/// The workspace root (xtask sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `target/xtask/` in the workspace: images, run directories and logs (independent of
/// CARGO_TARGET_DIR, so the paths xtask prints are always the same).
pub fn xtask_dir() -> PathBuf {
    workspace_root().join("target").join("xtask")
}

/// `path` relative to the workspace root when it lies inside it, for shorter messages.
pub fn display(path: &Path) -> String {
    let root = workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The cargo that runs us (`cargo xtask` sets CARGO), else `cargo` from PATH.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
