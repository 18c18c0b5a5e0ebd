//! The boot disk: a GPT disk (protective MBR, primary and backup headers) holding one FAT32 EFI
//! System Partition with the loader, the hypervisor, the guests and the configuration.
//!
//! The same image boots Bochs, QEMU and a real server written with `dd`. Its size is a whole number
//! of Bochs cylinders (16 heads x 63 sectors): Bochs sizes a flat disk as C/16/63 and cannot reach
//! sectors past the last whole cylinder, where the GPT backup header lives (UEFI 2.10 s5.3.2: the
//! backup header is in the disk's last LBA).
//!
//! The image is reproducible: the same files give a byte-identical disk. Nothing in it comes from
//! the clock or a random source: the disk and partition GUIDs and the FAT volume ID are derived from
//! a hash of the files (see [`InputHash`]), every FAT timestamp is [`FAT_EPOCH`], and the files are
//! written in path order whatever order the caller lists them in.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fatfs::{FileSystem, FormatVolumeOptions, FsOptions, TimeProvider};
use fscommon::{BufStream, StreamSlice};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types;

use crate::artifacts::Artifacts;
use crate::config::{ImageConfig, SELFTEST_KERNEL_FILE};
use crate::fat_fixup;
use crate::paths;

pub const SECTOR: u64 = 512;
/// One Bochs cylinder: 16 heads x 63 sectors x 512 bytes.
pub const CYLINDER_BYTES: u64 = 16 * 63 * SECTOR;
/// 130 cylinders = 65,520 KiB: big enough for FAT32 with 512-byte clusters (at least 65,525
/// clusters, Microsoft FAT spec "FAT type determination").
pub const MIN_CYLINDERS: u64 = 130;
/// The ESP starts at 1 MiB, the alignment partitioning tools use for real disks.
pub const ESP_FIRST_LBA: u64 = 2048;
/// The GPT's backup partition entries and header take the last 33 sectors (128 entries x 128 bytes).
const GPT_BACKUP_SECTORS: u64 = 33;
/// FAT32 needs at least this many clusters (with some margin over 65,525).
const FAT32_MIN_CLUSTERS: u64 = 66_000;

pub const LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
pub const HYPERVISOR_PATH: &str = "exitless/hypervisor.elf";
/// The self-test kernel: only on images whose configuration's `kernel` names it (test boots).
pub const SELFTEST_KERNEL_PATH: &str = "exitless/hypervisor-selftest.elf";
pub const CONFIG_PATH: &str = "exitless/exitless.cfg";
pub const GUESTS_DIR: &str = "exitless/guests";
/// The FAT volume label (11 bytes, space-padded; in the boot sector and the root directory).
const VOLUME_LABEL: [u8; 11] = *b"EXITLESS   ";

/// 1980-01-01 00:00:00, the earliest date FAT can record (its date field counts years from 1980;
/// Microsoft FAT spec s6.3.1). Every file and directory gets it as its created, modified and
/// accessed time, so the image does not depend on when it was written.
const FAT_EPOCH: fatfs::DateTime = fatfs::DateTime {
    date: fatfs::Date {
        year: 1980,
        month: 1,
        day: 1,
    },
    time: fatfs::Time {
        hour: 0,
        min: 0,
        sec: 0,
        millis: 0,
    },
};

/// The `fatfs` clock: always [`FAT_EPOCH`] (its default reads the local time).
#[derive(Debug)]
struct FixedTime;

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        FAT_EPOCH.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        FAT_EPOCH
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// A 128-bit FNV-1a hash (the FNV parameters of draft-eastlake-fnv, 128-bit variant) of the image's
/// inputs: every file's path, length and contents, in path order. Not cryptographic; it only has
/// to make the identifiers differ when the inputs do, and stay the same when they do not.
struct InputHash(u128);

impl InputHash {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    /// The hash of `domain` (which identifier this is) followed by `files`.
    fn of(domain: &str, files: &[&EspFile]) -> Self {
        let mut h = Self(Self::OFFSET_BASIS);
        h.add(domain.as_bytes());
        for file in files {
            h.add(&(file.path.len() as u64).to_le_bytes());
            h.add(file.path.as_bytes());
            h.add(&(file.data.len() as u64).to_le_bytes());
            h.add(&file.data);
        }
        h
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u128::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    /// As a GUID: RFC 9562 version 8 ("custom"), variant 10, the other 122 bits from the hash.
    fn guid(&self) -> uuid::Uuid {
        let mut bytes = self.0.to_be_bytes();
        bytes[6] = (bytes[6] & 0x0F) | 0x80;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        uuid::Uuid::from_bytes(bytes)
    }
}

/// The identifiers [`write_image`] gives a disk holding `files` (in path order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The GPT header's DiskGUID.
    pub disk_guid: uuid::Uuid,
    /// The ESP's UniquePartitionGUID (its type GUID is the fixed EFI System Partition one,
    /// C12A7328-F81F-11D2-BA4B-00A0C93EC93B, UEFI 2.10 table 5-7).
    pub esp_guid: uuid::Uuid,
    /// The FAT32 BS_VolID.
    pub volume_id: u32,
}

impl Identity {
    fn of(files: &[&EspFile]) -> Self {
        let volume = InputHash::of("exitless fat volume id", files).0;
        Self {
            disk_guid: InputHash::of("exitless gpt disk guid", files).guid(),
            esp_guid: InputHash::of("exitless gpt esp guid", files).guid(),
            volume_id: (volume >> 96) as u32,
        }
    }
}

/// One file on the ESP: its path there (`/`-separated) and contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspFile {
    pub path: String,
    pub data: Vec<u8>,
}

/// What was written, for messages and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub total_bytes: u64,
    pub esp_first_lba: u64,
    pub esp_last_lba: u64,
    pub cluster_bytes: u32,
    pub identity: Identity,
}

/// The ESP's files for these build outputs and configuration text. The self-test kernel is there
/// only when the configuration's `kernel` names it: every other image holds no self-test code.
pub fn esp_files(built: &Artifacts, config_text: &str) -> Result<Vec<EspFile>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut files = Vec::new();
    if exitless_abi::config_text::top_level(config_text, "kernel") == Some(SELFTEST_KERNEL_FILE) {
        let Some(selftest) = &built.hypervisor_selftest_elf else {
            bail!("the configuration boots {SELFTEST_KERNEL_FILE}, which was not built");
        };
        files.push(EspFile {
            path: SELFTEST_KERNEL_PATH.into(),
            data: read(selftest)?,
        });
    }
    files.extend([
        EspFile {
            path: LOADER_PATH.into(),
            data: read(&built.boot_efi)?,
        },
        EspFile {
            path: HYPERVISOR_PATH.into(),
            data: read(&built.hypervisor_elf)?,
        },
        EspFile {
            path: CONFIG_PATH.into(),
            data: config_text.as_bytes().to_vec(),
        },
    ]);
    for guest in &built.guests {
        let stem = guest
            .file_stem()
            .and_then(|s| s.to_str())
            .context("guest binary without a UTF-8 name")?;
        files.push(EspFile {
            path: format!("{GUESTS_DIR}/{stem}.elf"),
            data: read(guest)?,
        });
    }
    Ok(files)
}

/// The modules an image of `built` carries whatever its configuration, relative to `\exitless\`
/// (what a guest's `image = guests/NAME.elf` may name).
pub fn carried_modules(built: &Artifacts) -> Vec<String> {
    built
        .guests
        .iter()
        .filter_map(|g| g.file_stem().and_then(|s| s.to_str()))
        .map(|stem| format!("guests/{stem}.elf"))
        .collect()
}

/// [`esp_files`] for a configuration whose guests may name files on this machine (`image`,
/// `linux`, `initrd`; relative paths from `base`): those are copied onto the ESP and the
/// configuration written there names their ESP paths (see [`crate::guest_files`]). Returns the
/// configuration as written and the files.
pub fn esp_files_resolving(
    built: &Artifacts,
    config_text: &str,
    base: &Path,
) -> Result<(String, Vec<EspFile>)> {
    let resolved = crate::guest_files::resolve(config_text, base, &carried_modules(built))?;
    let mut files = esp_files(built, &resolved.text)?;
    files.extend(resolved.files);
    Ok((resolved.text, files))
}

/// The disk size for this much content: whole cylinders, at least [`MIN_CYLINDERS`].
pub fn disk_bytes_for(content_bytes: u64) -> u64 {
    // Room for the GPT, the 1 MiB gap, two FATs (4 bytes per 512-byte cluster each) and slack.
    let needed = 4 * 1024 * 1024 + content_bytes + content_bytes / 8;
    needed.div_ceil(CYLINDER_BYTES).max(MIN_CYLINDERS) * CYLINDER_BYTES
}

/// The smallest cluster size (512 B to 4 KiB) that still leaves FAT32 enough clusters.
fn cluster_bytes_for(partition_bytes: u64) -> u32 {
    let mut cluster = 512u32;
    while cluster < 4096 && partition_bytes / (2 * u64::from(cluster)) >= FAT32_MIN_CLUSTERS {
        cluster *= 2;
    }
    cluster
}

/// Writes a GPT disk image with one FAT32 ESP holding `files` to `out` (replacing it). The same
/// files (in any order) give the same bytes.
pub fn write_image(files: &[EspFile], out: &Path) -> Result<Layout> {
    let mut files: Vec<&EspFile> = files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(pair) = files.windows(2).find(|w| w[0].path == w[1].path) {
        bail!("{} is listed twice for the ESP", pair[0].path);
    }
    let identity = Identity::of(&files);
    let content: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).next_multiple_of(4096))
        .sum();
    let total_bytes = disk_bytes_for(content);
    let total_lba = total_bytes / SECTOR;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    disk.set_len(total_bytes)?;

    // Protective MBR: one 0xEE partition over the whole disk (capped at 2^32-1 sectors), UEFI 2.10 s5.2.3.
    let protective_sectors = u32::try_from(total_lba - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(protective_sectors)
        .overwrite_lba0(&mut disk)
        .context("writing the protective MBR")?;

    // The ESP ends on a 1 MiB boundary too, before the backup partition array.
    let last_usable = total_lba - GPT_BACKUP_SECTORS - 1;
    let esp_last_lba = (last_usable + 1) / ESP_FIRST_LBA * ESP_FIRST_LBA - 1;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(disk, Some(identity.disk_guid))
        .context("creating the GPT")?;
    gpt.add_partition_at(
        "EFI System Partition",
        1,
        ESP_FIRST_LBA,
        esp_last_lba - ESP_FIRST_LBA + 1,
        partition_types::EFI,
        0,
    )
    .context("adding the ESP")?;
    // `add_partition_at` gives the partition a random GUID; replace it with the derived one.
    let mut partitions = gpt.take_partitions();
    for partition in partitions.values_mut() {
        partition.part_guid = identity.esp_guid;
    }
    gpt.update_partitions(partitions)
        .context("setting the ESP's GUID")?;
    let mut disk = gpt.write().context("writing the GPT")?;

    let start = ESP_FIRST_LBA * SECTOR;
    let end = (esp_last_lba + 1) * SECTOR;
    let cluster_bytes = cluster_bytes_for(end - start);
    {
        let mut slice = StreamSlice::new(&mut disk, start, end)?;
        fatfs::format_volume(
            &mut slice,
            FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat32)
                .bytes_per_cluster(cluster_bytes)
                .volume_id(identity.volume_id)
                .volume_label(VOLUME_LABEL),
        )
        .context("formatting the ESP as FAT32")?;
        let fs = FileSystem::new(
            BufStream::new(slice),
            FsOptions::new().time_provider(&FIXED_TIME),
        )?;
        for &file in &files {
            let root = fs.root_dir();
            let (dir_path, name) = file.path.rsplit_once('/').unwrap_or(("", &file.path));
            let mut dir = root;
            for part in dir_path.split('/').filter(|p| !p.is_empty()) {
                dir = dir.create_dir(part)?;
            }
            let mut f = dir
                .create_file(name)
                .with_context(|| format!("creating {} on the ESP", file.path))?;
            f.truncate()?;
            f.write_all(&file.data)
                .with_context(|| format!("writing {} on the ESP", file.path))?;
        }
        fs.unmount()?;
    }
    fat_fixup::fix_volume(
        &mut StreamSlice::new(&mut disk, start, end)?,
        ESP_FIRST_LBA as u32,
    )
    .context("repairing the FAT32 directories")?;
    disk.sync_all()?;
    Ok(Layout {
        total_bytes,
        esp_first_lba: ESP_FIRST_LBA,
        esp_last_lba,
        cluster_bytes,
        identity,
    })
}

/// Reopens an image with `gpt` and `fatfs` and returns every file on its ESP, by path.
pub fn read_esp(image: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(image)
        .context("reading the GPT")?;
    let esp = gpt
        .partitions()
        .values()
        .find(|p| p.part_type_guid == partition_types::EFI)
        .context("no EFI System Partition in the GPT")?
        .clone();
    let mut disk = File::open(image)?;
    let slice = StreamSlice::new(
        ReadOnly(&mut disk),
        esp.first_lba * SECTOR,
        (esp.last_lba + 1) * SECTOR,
    )?;
    let fs = FileSystem::new(slice, FsOptions::new())?;
    if fs.fat_type() != fatfs::FatType::Fat32 {
        bail!("the ESP is {:?}, not FAT32", fs.fat_type());
    }
    let mut files = BTreeMap::new();
    let mut pending = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = pending.pop() {
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if entry.is_dir() {
                pending.push((format!("{path}/"), entry.to_dir()));
            } else {
                let mut data = Vec::new();
                entry.to_file().read_to_end(&mut data)?;
                files.insert(path, data);
            }
        }
    }
    Ok(files)
}

/// A file opened read-only, presented as Read + Write + Seek (fatfs wants all three; writing fails).
struct ReadOnly<'a>(&'a mut File);

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadOnly<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "image opened read-only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for ReadOnly<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}

/// `cargo xtask image`: build, then write the image for a real server (or the given config).
pub fn image_command(out: Option<PathBuf>, config: Option<PathBuf>) -> Result<()> {
    crate::prereq::ensure_rust_targets()?;
    let config_text = match &config {
        Some(path) => {
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => ImageConfig::server().render(),
    };
    let built = crate::artifacts::build_all(crate::artifacts::Kernels::for_config(&config_text))?;
    let out = out.unwrap_or_else(|| paths::xtask_dir().join("exitless.img"));
    let base = config
        .as_deref()
        .map_or_else(paths::workspace_root, config_dir);
    let (_, files) =
        esp_files_resolving(&built, &config_text, &base).with_context(|| match &config {
            Some(path) => format!("in {}", path.display()),
            None => "in the default configuration".into(),
        })?;
    let layout = write_image(&files, &out)?;
    // Read it back the way a firmware would (GPT, then FAT32) before anyone writes it to a disk.
    let back = read_esp(&out).context("reading the new image back")?;
    for file in &files {
        if back.get(&file.path) != Some(&file.data) {
            bail!(
                "{} did not read back intact from {}",
                file.path,
                out.display()
            );
        }
    }
    println!(
        "wrote {} ({} KiB, {} cylinders; ESP LBA {}..={}, FAT32 with {}-byte clusters)",
        out.display(),
        layout.total_bytes / 1024,
        layout.total_bytes / CYLINDER_BYTES,
        layout.esp_first_lba,
        layout.esp_last_lba,
        layout.cluster_bytes
    );
    for file in &files {
        println!("  {:<40} {:>9} bytes", file.path, file.data.len());
    }
    println!(
        "write it to a USB stick with: sudo dd if={} of=/dev/sdX bs=4M conv=fsync",
        out.display()
    );
    Ok(())
}

/// The directory a configuration file's relative paths start from: the one it is in.
pub fn config_dir(config_file: &Path) -> PathBuf {
    let dir = config_file.parent().unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_files() -> Vec<EspFile> {
        vec![
            EspFile {
                path: LOADER_PATH.into(),
                data: b"MZ fake loader".to_vec(),
            },
            EspFile {
                path: HYPERVISOR_PATH.into(),
                data: (0..200_000u32).map(|i| (i % 251) as u8).collect(),
            },
            EspFile {
                path: CONFIG_PATH.into(),
                data: ImageConfig::server().render().into_bytes(),
            },
            EspFile {
                path: format!("{GUESTS_DIR}/eli.elf"),
                data: b"\x7fELF guest".to_vec(),
            },
        ]
    }

    #[test]
    fn image_reopens_with_every_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.img");
        let files = sample_files();
        let layout = write_image(&files, &path).unwrap();

        // 130 Bochs cylinders = 65,520 KiB, and the file is exactly that long.
        assert_eq!(layout.total_bytes, 130 * 516_096);
        assert_eq!(layout.total_bytes, 65_520 * 1024);
        assert_eq!(fs::metadata(&path).unwrap().len(), layout.total_bytes);

        let read = read_esp(&path).unwrap();
        let expected: BTreeMap<String, Vec<u8>> =
            files.into_iter().map(|f| (f.path, f.data)).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn disk_has_protective_mbr_and_backup_gpt_in_the_last_sector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.img");
        let layout = write_image(&sample_files(), &path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let total_lba = layout.total_bytes / SECTOR;

        // MBR: boot signature 55 AA; first record type 0xEE starting at LBA 1 (UEFI 2.10 table 5-4).
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        let record = &bytes[446..462];
        assert_eq!(record[4], 0xEE);
        assert_eq!(u32::from_le_bytes(record[8..12].try_into().unwrap()), 1);
        assert_eq!(
            u64::from(u32::from_le_bytes(record[12..16].try_into().unwrap())),
            total_lba - 1
        );

        // Primary header at LBA 1 and backup header at the last LBA, both "EFI PART".
        let at = |lba: u64| &bytes[(lba * SECTOR) as usize..][..8];
        assert_eq!(at(1), b"EFI PART");
        assert_eq!(at(total_lba - 1), b"EFI PART");
        // The ESP starts at 1 MiB and ends on a 1 MiB boundary before the backup partition array
        // (131,040 sectors in all; the last usable one is 131,006; 63 MiB end at LBA 129,023).
        assert_eq!(layout.esp_first_lba, 2048);
        assert_eq!(total_lba, 131_040);
        assert_eq!(layout.esp_last_lba, 129_023);
        assert_eq!(layout.cluster_bytes, 512);
    }

    /// Small fake build outputs in `dir`, as [`Artifacts`] (guests listed in `guest_order`).
    fn fake_artifacts(dir: &Path, hypervisor: &[u8], guest_order: &[&str]) -> Artifacts {
        let write = |name: &str, data: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, data).unwrap();
            path
        };
        let guests = guest_order
            .iter()
            .map(|g| write(g, format!("\x7fELF fake guest {g}").as_bytes()))
            .collect();
        Artifacts {
            boot_efi: write("boot.efi", b"MZ fake loader"),
            hypervisor_elf: write("hypervisor", hypervisor),
            hypervisor_selftest_elf: Some(write("hypervisor-selftest.elf", b"\x7fELF self-tests")),
            guests,
        }
    }

    #[test]
    fn only_selftest_images_hold_the_selftest_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let built = fake_artifacts(dir.path(), b"\x7fELF production", &["basic"]);
        let paths_of = |config: &ImageConfig| -> Vec<String> {
            esp_files(&built, &config.render())
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .collect()
        };
        for config in [ImageConfig::server(), ImageConfig::emulator()] {
            let paths = paths_of(&config);
            assert!(paths.iter().any(|p| p == HYPERVISOR_PATH));
            assert!(
                !paths.iter().any(|p| p == SELFTEST_KERNEL_PATH),
                "{paths:?}"
            );
        }
        let paths = paths_of(&ImageConfig::selftest("vtd"));
        assert!(paths.iter().any(|p| p == SELFTEST_KERNEL_PATH), "{paths:?}");

        let production_only = Artifacts {
            hypervisor_selftest_elf: None,
            ..built.clone()
        };
        let err = esp_files(&production_only, &ImageConfig::selftest("vtd").render()).unwrap_err();
        assert!(err.to_string().contains("was not built"), "{err}");
    }

    fn image_of(dir: &Path, name: &str, built: &Artifacts) -> (Vec<u8>, Layout) {
        let path = dir.join(name);
        let config = ImageConfig::server().render();
        let layout = write_image(&esp_files(built, &config).unwrap(), &path).unwrap();
        (fs::read(&path).unwrap(), layout)
    }

    #[test]
    fn same_inputs_give_a_byte_identical_image() {
        let dir = tempfile::tempdir().unwrap();
        let hypervisor: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let first = fake_artifacts(dir.path(), &hypervisor, &["basic", "eli", "bench"]);
        let (a, layout_a) = image_of(dir.path(), "a.img", &first);
        // Again, with the guests reported in another order (cargo's order is not fixed) and a
        // second apart, so a timestamp from the clock would show.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = fake_artifacts(dir.path(), &hypervisor, &["eli", "bench", "basic"]);
        let (b, layout_b) = image_of(dir.path(), "b.img", &second);
        assert_eq!(layout_a, layout_b);
        assert_eq!(a.len(), b.len());
        if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!("the images differ first at byte {at:#x}");
        }
    }

    #[test]
    fn different_inputs_give_a_different_image_and_identifiers() {
        let dir = tempfile::tempdir().unwrap();
        let mut hypervisor: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let (a, layout_a) = image_of(
            dir.path(),
            "a.img",
            &fake_artifacts(dir.path(), &hypervisor, &["basic"]),
        );
        hypervisor[100_000] ^= 1;
        let (b, layout_b) = image_of(
            dir.path(),
            "b.img",
            &fake_artifacts(dir.path(), &hypervisor, &["basic"]),
        );
        assert_ne!(a, b);
        let (ia, ib) = (layout_a.identity, layout_b.identity);
        assert_ne!(ia.disk_guid, ib.disk_guid);
        assert_ne!(ia.esp_guid, ib.esp_guid);
        assert_ne!(ia.volume_id, ib.volume_id);
        assert_ne!(ia.disk_guid, ia.esp_guid);
    }

    #[test]
    fn image_carries_the_derived_identifiers_and_fixed_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.img");
        let layout = write_image(&sample_files(), &path).unwrap();
        let id = layout.identity;
        // RFC 9562 version 8, variant 10.
        for guid in [id.disk_guid, id.esp_guid] {
            assert_eq!(guid.get_version_num(), 8);
            assert_eq!(guid.as_bytes()[8] >> 6, 0b10);
        }

        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(LogicalBlockSize::Lb512)
            .open(&path)
            .unwrap();
        assert_eq!(*disk.guid(), id.disk_guid);
        let esp = &disk.partitions()[&1];
        assert_eq!(esp.part_guid, id.esp_guid);
        assert_eq!(esp.part_type_guid, partition_types::EFI);

        let mut file = File::open(&path).unwrap();
        let slice = StreamSlice::new(
            ReadOnly(&mut file),
            esp.first_lba * SECTOR,
            (esp.last_lba + 1) * SECTOR,
        )
        .unwrap();
        let fs = FileSystem::new(slice, FsOptions::new()).unwrap();
        assert_eq!(fs.volume_id(), id.volume_id);
        assert_eq!(fs.volume_label(), "EXITLESS");
        let mut pending = vec![fs.root_dir()];
        let mut seen = 0;
        while let Some(dir) = pending.pop() {
            for entry in dir.iter() {
                let entry = entry.unwrap();
                if entry.file_name() == "." || entry.file_name() == ".." {
                    continue;
                }
                seen += 1;
                assert_eq!(entry.created(), FAT_EPOCH, "{}", entry.file_name());
                assert_eq!(entry.modified(), FAT_EPOCH, "{}", entry.file_name());
                assert_eq!(entry.accessed(), FAT_EPOCH.date, "{}", entry.file_name());
                if entry.is_dir() {
                    pending.push(entry.to_dir());
                }
            }
        }
        // EFI, EFI/BOOT, exitless, exitless/guests and the four files.
        assert_eq!(seen, 8);
    }

    #[test]
    fn a_path_listed_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = sample_files();
        files.push(files[0].clone());
        let err = write_image(&files, &dir.path().join("x.img")).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    /// A Linux guest's files: a 63 MiB vmlinux and a 2 MiB initramfs beside the usual ones.
    #[test]
    fn a_vmlinux_sized_module_fits_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linux.img");
        let mut files = sample_files();
        let vmlinux: Vec<u8> = (0..65_906_612u32).map(|i| (i % 241) as u8).collect();
        files.push(EspFile {
            path: format!("{GUESTS_DIR}/linux-vmlinux"),
            data: vmlinux,
        });
        files.push(EspFile {
            path: format!("{GUESTS_DIR}/linux-initrd.cpio"),
            data: vec![0x30; 2_324_708],
        });
        let layout = write_image(&files, &path).unwrap();
        assert!(layout.total_bytes > 68 * 1024 * 1024);
        assert_eq!(layout.total_bytes % CYLINDER_BYTES, 0);
        let back = read_esp(&path).unwrap();
        for file in &files {
            assert!(back.get(&file.path) == Some(&file.data), "{}", file.path);
        }
    }

    #[test]
    fn sizes_are_whole_cylinders() {
        assert_eq!(disk_bytes_for(0), 130 * CYLINDER_BYTES);
        let big = disk_bytes_for(100 * 1024 * 1024);
        assert_eq!(big % CYLINDER_BYTES, 0);
        assert!(big >= 100 * 1024 * 1024 + 4 * 1024 * 1024);
    }

    #[test]
    fn cluster_size_keeps_fat32_cluster_count() {
        assert_eq!(cluster_bytes_for(64 * 1024 * 1024), 512);
        assert_eq!(cluster_bytes_for(1024 * 1024 * 1024), 4096);
        for size in [40u64 << 20, 100 << 20, 300 << 20, 2 << 30] {
            assert!(size / u64::from(cluster_bytes_for(size)) >= FAT32_MIN_CLUSTERS);
        }
    }
}
