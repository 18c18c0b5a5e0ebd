//! One directory per command run, so two runs at once never write into each other's logs:
//! `PARENT/<run-id>/`, where the run id is the UTC start time and the process id
//! (`20260115T093012Z-4242`: names sort by start time). `PARENT/latest` is a symlink to the newest
//! run's directory, and only the newest [`KEEP_RUNS`] run directories are kept.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// How many run directories stay under one parent (this run's included).
pub const KEEP_RUNS: usize = 10;
/// The symlink to the newest run's directory.
pub const LATEST: &str = "latest";

/// The run id for a run that started at `now` in process `pid`: `YYYYMMDDTHHMMSSZ-PID`.
pub fn run_id(now: SystemTime, pid: u32) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date(secs / 86_400);
    let rest = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z-{pid}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian (year, month, day) of the day `days` after 1970-01-01.
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut year = 1970;
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let months = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for len in months {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    (year, month, days + 1)
}

/// Whether `name` is a run id (possibly with a `-N` suffix): only those are ever pruned.
fn is_run_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 17
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_digit() || *c == b'-')
}

/// Creates this run's directory under `parent`, points `parent/latest` at it and deletes all but
/// the newest [`KEEP_RUNS`] run directories there. Returns the new directory.
pub fn create(parent: &Path) -> Result<PathBuf> {
    create_at(parent, SystemTime::now(), std::process::id(), KEEP_RUNS)
}

fn create_at(parent: &Path, now: SystemTime, pid: u32, keep: usize) -> Result<PathBuf> {
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let id = run_id(now, pid);
    let mut name = id.clone();
    let mut n = 1;
    let dir = loop {
        let dir = parent.join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                n += 1;
                name = format!("{id}-{n}");
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    };
    point_latest(parent, &name)?;
    prune(parent, &name, keep)?;
    Ok(dir)
}

/// Replaces `parent/latest` with a symlink to `name` (made beside it, then renamed over it, so
/// `latest` always exists once one run has started).
fn point_latest(parent: &Path, name: &str) -> Result<()> {
    let tmp = parent.join(format!(".{LATEST}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)
        .with_context(|| format!("creating the symlink {}", tmp.display()))?;
    let latest = parent.join(LATEST);
    fs::rename(&tmp, &latest).with_context(|| format!("replacing {}", latest.display()))
}

/// Deletes the oldest run directories under `parent` until `keep` remain; never `current`, the
/// directory this run just made (a run that starts later may have pruned it by the time its
/// output is read, which only happens after [`KEEP_RUNS`] newer runs).
fn prune(parent: &Path, current: &str, keep: usize) -> Result<()> {
    let mut runs: Vec<String> = fs::read_dir(parent)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_run_id(name))
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(keep);
    for old in runs.iter().take(excess).filter(|n| *n != current) {
        let path = parent.join(old);
        // Another run may be pruning the same directory; losing that race is fine.
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn run_ids_are_utc_start_times_and_sort_by_them() {
        assert_eq!(run_id(at(0), 7), "19700101T000000Z-7");
        // `date -u -d @946684799`: 1999-12-31 23:59:59; 951782400 is 2000-02-29 (a leap day).
        assert_eq!(run_id(at(946_684_799), 1), "19991231T235959Z-1");
        assert_eq!(run_id(at(951_782_400), 1), "20000229T000000Z-1");
        assert_eq!(run_id(at(1_700_000_000), 4242), "20231114T221320Z-4242");
        assert_eq!(run_id(at(4_107_542_400), 1), "21000301T000000Z-1");
        let mut ids: Vec<String> = [1_700_000_100, 1_600_000_000, 1_700_000_000]
            .iter()
            .map(|&s| run_id(at(s), 99_999 - s as u32 % 7))
            .collect();
        ids.sort();
        assert!(ids[0].starts_with("2020") && ids[2].starts_with("20231114T221500Z"));
        assert!(ids.iter().all(|id| is_run_id(id)));
        assert!(!is_run_id("latest") && !is_run_id("bochs-boot") && !is_run_id("host"));
    }

    #[test]
    fn each_run_gets_its_own_directory_and_latest_follows() {
        let parent = tempfile::tempdir().unwrap();
        let a = create_at(parent.path(), at(1_700_000_000), 10, 10).unwrap();
        let b = create_at(parent.path(), at(1_700_000_000), 10, 10).unwrap();
        let c = create_at(parent.path(), at(1_700_000_001), 11, 10).unwrap();
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir() && c.is_dir());
        assert_eq!(b.file_name().unwrap(), "20231114T221320Z-10-2");
        let latest = parent.path().join(LATEST);
        assert_eq!(fs::read_link(&latest).unwrap(), c.file_name().unwrap());
        assert_eq!(
            fs::canonicalize(&latest).unwrap(),
            fs::canonicalize(&c).unwrap()
        );
    }

    #[test]
    fn only_the_newest_runs_are_kept_and_nothing_else_is_touched() {
        let parent = tempfile::tempdir().unwrap();
        fs::create_dir(parent.path().join("bochs-boot")).unwrap();
        fs::write(parent.path().join("notes.txt"), "mine").unwrap();
        let dirs: Vec<PathBuf> = (0..6)
            .map(|i| create_at(parent.path(), at(1_700_000_000 + i * 60), 5, 3).unwrap())
            .collect();
        for (i, dir) in dirs.iter().enumerate() {
            assert_eq!(dir.exists(), i >= 3, "{}", dir.display());
        }
        assert!(parent.path().join("bochs-boot").is_dir());
        assert!(parent.path().join("notes.txt").is_file());
        assert_eq!(
            fs::read_link(parent.path().join(LATEST)).unwrap(),
            dirs[5].file_name().unwrap()
        );
    }
}
