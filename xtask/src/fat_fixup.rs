//! Repairs what `fatfs` 0.3.6 (the newest release) gets wrong when it formats and fills a FAT32
//! volume, so strict FAT drivers and `fsck.fat` accept the ESP:
//!
//! - `Dir::create_dir` writes a long-name entry before each of `.` and `..`
//!   (rafalh/rust-fatfs#117, fixed on its master by #100, unreleased). The FAT specification
//!   (Microsoft FAT32 File System Specification 1.03, s6.3 "FAT Directory Structure": "." and ".."
//!   are the first two entries of every directory but the root) wants them in slots 0 and 1. We move
//!   them there and mark the two long-name entries deleted (0xE5).
//!   Their `..` also names the root by its cluster number; s6.3 wants 0 there when the parent is the root.
//! - `format_volume` leaves BPB_HiddSec at 0; it should be the partition's first LBA (s3.1).
//! - The FSInfo free-cluster count stays "unknown" (0xFFFFFFFF); we count the free clusters (s5).

use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const DELETED: u8 = 0xE5;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
/// FAT32 entries at or above this end a cluster chain (s4.1).
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;

/// The BPB fields we need (offsets from s3.1 and s3.3 of the specification).
#[derive(Clone, Copy, Debug)]
struct Bpb {
    bytes_per_sector: u64,
    cluster_bytes: u64,
    fat_offset: u64,
    data_offset: u64,
    root_cluster: u32,
    backup_boot_sector: u64,
    fsinfo_sector: u64,
    data_clusters: u32,
}

impl Bpb {
    fn parse(sector: &[u8; 512]) -> io::Result<Self> {
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([sector[o], sector[o + 1]]));
        let u32_at = |o: usize| u32::from_le_bytes(sector[o..o + 4].try_into().unwrap());
        let bytes_per_sector = u16_at(0x0B);
        let sectors_per_cluster = u64::from(sector[0x0D]);
        let reserved = u16_at(0x0E);
        let fats = u64::from(sector[0x10]);
        let fat_sectors = u64::from(u32_at(0x24));
        if bytes_per_sector == 0 || sectors_per_cluster == 0 || fat_sectors == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a FAT32 boot sector",
            ));
        }
        Ok(Self {
            bytes_per_sector,
            cluster_bytes: bytes_per_sector * sectors_per_cluster,
            fat_offset: reserved * bytes_per_sector,
            data_offset: (reserved + fats * fat_sectors) * bytes_per_sector,
            root_cluster: u32_at(0x2C),
            backup_boot_sector: u16_at(0x32),
            fsinfo_sector: u16_at(0x30),
            data_clusters: ((u64::from(u32_at(0x20)) - reserved - fats * fat_sectors)
                / sectors_per_cluster) as u32,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_bytes
    }
}

/// Applies both repairs to the FAT32 volume in `volume` (a stream over the partition only).
pub fn fix_volume<V: Read + Write + Seek>(
    volume: &mut V,
    partition_first_lba: u32,
) -> io::Result<()> {
    let mut boot = [0u8; 512];
    volume.seek(SeekFrom::Start(0))?;
    volume.read_exact(&mut boot)?;
    let bpb = Bpb::parse(&boot)?;
    for sector in [0, bpb.backup_boot_sector] {
        volume.seek(SeekFrom::Start(sector * bpb.bytes_per_sector + 0x1C))?;
        volume.write_all(&partition_first_lba.to_le_bytes())?;
    }
    let mut pending = vec![bpb.root_cluster];
    while let Some(dir) = pending.pop() {
        for cluster in chain(volume, &bpb, dir)? {
            let mut data = vec![0u8; bpb.cluster_bytes as usize];
            volume.seek(SeekFrom::Start(bpb.cluster_offset(cluster)))?;
            volume.read_exact(&mut data)?;
            for entry in data.chunks_exact(ENTRY) {
                if entry[0] == 0 {
                    break;
                }
                let attr = entry[11];
                let name = &entry[..11];
                if entry[0] == DELETED || attr == ATTR_LONG_NAME || attr & ATTR_DIRECTORY == 0 {
                    continue;
                }
                if name == DOT || name == DOTDOT {
                    continue;
                }
                let first = u32::from(u16::from_le_bytes([entry[20], entry[21]])) << 16
                    | u32::from(u16::from_le_bytes([entry[26], entry[27]]));
                fix_dot_entries(volume, &bpb, first, dir == bpb.root_cluster)?;
                pending.push(first);
            }
        }
    }
    set_free_count(volume, &bpb)?;
    volume.seek(SeekFrom::Start(0))?;
    volume.flush()
}

/// Counts the free clusters in the first FAT and records them in FSInfo (FSI_Free_Count at 488).
fn set_free_count<V: Read + Write + Seek>(volume: &mut V, bpb: &Bpb) -> io::Result<()> {
    let mut fat = vec![0u8; (u64::from(bpb.data_clusters) + 2) as usize * 4];
    volume.seek(SeekFrom::Start(bpb.fat_offset))?;
    volume.read_exact(&mut fat)?;
    let free = fat
        .chunks_exact(4)
        .skip(2)
        .filter(|e| u32::from_le_bytes((*e).try_into().unwrap()) & 0x0FFF_FFFF == 0)
        .count() as u32;
    volume.seek(SeekFrom::Start(
        bpb.fsinfo_sector * bpb.bytes_per_sector + 488,
    ))?;
    volume.write_all(&free.to_le_bytes())
}

/// The clusters of the chain that starts at `first`.
fn chain<V: Read + Seek>(volume: &mut V, bpb: &Bpb, first: u32) -> io::Result<Vec<u32>> {
    let mut clusters = vec![first];
    loop {
        let mut next = [0u8; 4];
        let last = *clusters.last().unwrap();
        volume.seek(SeekFrom::Start(bpb.fat_offset + u64::from(last) * 4))?;
        volume.read_exact(&mut next)?;
        let next = u32::from_le_bytes(next) & 0x0FFF_FFFF;
        if !(2..END_OF_CHAIN).contains(&next) || clusters.len() > 1 << 20 {
            return Ok(clusters);
        }
        clusters.push(next);
    }
}

/// Rewrites `[LFN(.), ., LFN(..), .., ...]` at the start of a directory as `[., .., deleted, deleted, ...]`.
fn fix_dot_entries<V: Read + Write + Seek>(
    volume: &mut V,
    bpb: &Bpb,
    dir: u32,
    parent_is_root: bool,
) -> io::Result<()> {
    let mut head = [0u8; 4 * ENTRY];
    volume.seek(SeekFrom::Start(bpb.cluster_offset(dir)))?;
    volume.read_exact(&mut head)?;
    let slot = |i: usize| &head[i * ENTRY..(i + 1) * ENTRY];
    let buggy = slot(0)[11] == ATTR_LONG_NAME
        && &slot(1)[..11] == DOT
        && slot(2)[11] == ATTR_LONG_NAME
        && &slot(3)[..11] == DOTDOT;
    let mut fixed = head;
    if buggy {
        fixed[..ENTRY].copy_from_slice(slot(1));
        fixed[ENTRY..2 * ENTRY].copy_from_slice(slot(3));
        fixed[2 * ENTRY..3 * ENTRY].copy_from_slice(slot(0));
        fixed[3 * ENTRY..].copy_from_slice(slot(2));
        fixed[2 * ENTRY] = DELETED;
        fixed[3 * ENTRY] = DELETED;
    }
    if parent_is_root && &fixed[ENTRY..ENTRY + 11] == DOTDOT {
        // DIR_FstClusHI (20) and DIR_FstClusLO (26) of `..`.
        fixed[ENTRY + 20..ENTRY + 22].fill(0);
        fixed[ENTRY + 26..ENTRY + 28].fill(0);
    }
    if fixed == head {
        return Ok(());
    }
    volume.seek(SeekFrom::Start(bpb.cluster_offset(dir)))?;
    volume.write_all(&fixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn volume_with_dirs() -> Cursor<Vec<u8>> {
        let mut disk = Cursor::new(vec![0u8; 40 << 20]);
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat32)
                .bytes_per_cluster(512),
        )
        .unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            {
                let sub = fs.root_dir().create_dir("exitless").unwrap();
                let guests = sub.create_dir("guests").unwrap();
                // Enough entries that the directory spans several 512-byte clusters.
                for i in 0..20 {
                    guests
                        .create_file(&format!("guest-number-{i}.elf"))
                        .unwrap();
                }
                guests.create_dir("deeper").unwrap();
            }
            fs.unmount().unwrap();
        }
        disk.seek(SeekFrom::Start(0)).unwrap();
        disk
    }

    /// First cluster of the entry `name` in the directory starting at `dir` (any cluster of it).
    fn find(disk: &mut Cursor<Vec<u8>>, bpb: &Bpb, dir: u32, name: &[u8; 11]) -> u32 {
        for cluster in chain(disk, bpb, dir).unwrap() {
            let start = bpb.cluster_offset(cluster) as usize;
            let entries = &disk.get_ref()[start..start + bpb.cluster_bytes as usize];
            if let Some(e) = entries
                .chunks_exact(ENTRY)
                .find(|e| &e[..11] == name && e[11] != ATTR_LONG_NAME)
            {
                return u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
                    | u32::from(u16::from_le_bytes([e[26], e[27]]));
            }
        }
        panic!("no entry {name:?}")
    }

    #[test]
    fn dot_entries_move_to_the_first_slots_and_files_survive() {
        let mut disk = volume_with_dirs();
        // Before the fix FSInfo says "unknown", so fatfs counts the free clusters from the FAT.
        let scanned = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .unwrap()
            .stats()
            .unwrap()
            .free_clusters();
        disk.seek(SeekFrom::Start(0)).unwrap();
        fix_volume(&mut disk, 2048).unwrap();
        let bpb = Bpb::parse(disk.get_ref()[..512].try_into().unwrap()).unwrap();
        assert_eq!(
            u32::from_le_bytes(disk.get_ref()[0x1C..0x20].try_into().unwrap()),
            2048
        );

        let exitless = find(&mut disk, &bpb, bpb.root_cluster, b"EXITLESS   ");
        let guests = find(&mut disk, &bpb, exitless, b"GUESTS     ");
        let deeper = find(&mut disk, &bpb, guests, b"DEEPER     ");
        assert!(chain(&mut disk, &bpb, guests).unwrap().len() > 1);
        for (dir, parent) in [(exitless, 0), (guests, exitless), (deeper, guests)] {
            let at = bpb.cluster_offset(dir) as usize;
            let bytes = disk.get_ref();
            assert_eq!(&bytes[at..at + 11], DOT);
            assert_eq!(&bytes[at + 32..at + 43], DOTDOT);
            assert_eq!(bytes[at + 64], DELETED);
            assert_eq!(bytes[at + 96], DELETED);
            // `..` of a directory in the root names cluster 0.
            assert_eq!(
                u32::from(u16::from_le_bytes([bytes[at + 58], bytes[at + 59]])),
                parent & 0xFFFF
            );
        }
        // FSInfo's free count is known, and agrees with what fatfs computes.
        let fsinfo = (bpb.fsinfo_sector * bpb.bytes_per_sector) as usize;
        let recorded = u32::from_le_bytes(
            disk.get_ref()[fsinfo + 488..fsinfo + 492]
                .try_into()
                .unwrap(),
        );
        assert_eq!(recorded, scanned);

        // fatfs still reads everything, and `.`/`..` are where they should be everywhere.
        disk.seek(SeekFrom::Start(0)).unwrap();
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        let guests = fs.root_dir().open_dir("exitless/guests").unwrap();
        let names: Vec<String> = guests.iter().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(&names[..2], &[".", ".."]);
        assert_eq!(names.len(), 2 + 20 + 1);
        let deeper: Vec<String> = guests
            .open_dir("deeper")
            .unwrap()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(deeper, vec![".", ".."]);
    }

    #[test]
    fn a_correct_directory_is_left_alone() {
        let mut disk = volume_with_dirs();
        fix_volume(&mut disk, 2048).unwrap();
        let once = disk.get_ref().clone();
        fix_volume(&mut disk, 2048).unwrap();
        assert_eq!(&once, disk.get_ref());
    }
}
