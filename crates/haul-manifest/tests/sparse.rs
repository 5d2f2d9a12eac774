//! Sparse-file probing on whatever file system the temporary directory is on.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use haul_manifest::SparseMap;
use rustix::io::Errno;

const MIB: u64 = 1 << 20;

/// A new, empty file `name` in `dir`, open for reading and writing.
fn new_file(dir: &tempfile::TempDir, name: &str) -> File {
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join(name))
        .unwrap()
}

/// Whether this file system answers SEEK_DATA at all.
fn seek_data_supported(file: &File) -> bool {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(0)) {
        Ok(_) | Err(Errno::NXIO) => true,
        Err(_) => false,
    }
}

#[test]
fn finds_data_in_a_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = new_file(&dir, "s");
    let size = 64 * MIB;
    file.set_len(size).unwrap();
    file.write_all_at(&vec![0xa5; MIB as usize], 32 * MIB)
        .unwrap();
    file.sync_all().unwrap();

    let map = SparseMap::probe(&file, size).unwrap();
    assert!(!map.is_hole(32 * MIB, 33 * MIB));
    if seek_data_supported(&file) {
        assert!(map.is_hole(0, 16 * MIB));
        assert!(map.is_hole(40 * MIB, size));
        assert!(
            map.data_bytes() >= MIB && map.data_bytes() <= 2 * MIB,
            "{:?}",
            map.extents()
        );
    } else {
        assert_eq!(map.extents(), std::slice::from_ref(&(0..size)));
        assert_eq!(map.data_bytes(), size);
        assert!(!map.is_hole(0, 16 * MIB));
    }
}

#[test]
fn dense_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = new_file(&dir, "d");
    assert_eq!(SparseMap::probe(&file, 0).unwrap().data_bytes(), 0);
    assert!(SparseMap::probe(&file, 0).unwrap().is_hole(0, 1));

    file.write_all_at(&[1; 300_000], 0).unwrap();
    file.seek(SeekFrom::Start(1234)).unwrap();
    let map = SparseMap::probe(&file, 300_000).unwrap();
    assert_eq!(map.extents(), std::slice::from_ref(&(0..300_000)));
    assert_eq!(map.data_bytes(), 300_000);
    assert!(!map.is_hole(299_999, 300_000));
    // Probing must not disturb a caller that reads with the file offset.
    assert_eq!(file.stream_position().unwrap(), 1234);

    // A size smaller than the file limits the map: data past it is ignored.
    let map = SparseMap::probe(&file, 1000).unwrap();
    assert_eq!(map.extents(), std::slice::from_ref(&(0..1000)));
}

#[test]
fn nearby_extents_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let file = new_file(&dir, "m");
    let size = 16 * MIB;
    file.set_len(size).unwrap();
    // Small pieces of data 16 KiB apart: fewer than 64 KiB of hole between them.
    for i in 0..64u64 {
        file.write_all_at(&[7; 4096], 4 * MIB + i * 20 * 1024)
            .unwrap();
    }
    file.sync_all().unwrap();
    let map = SparseMap::probe(&file, size).unwrap();
    if seek_data_supported(&file) {
        assert_eq!(map.extents().len(), 1, "{:?}", map.extents());
        assert!(map.is_hole(0, 4 * MIB));
        assert!(map.is_hole(6 * MIB, size));
    } else {
        assert_eq!(map.extents(), std::slice::from_ref(&(0..size)));
    }
}

/// `data_in` clips the extents to a range: what the sender reads of a chunk that is partly
/// hole.
#[test]
fn data_in_clips_extents_to_the_asked_range() {
    let dir = tempfile::tempdir().unwrap();
    let file = new_file(&dir, "s");
    let size = 16 * MIB;
    file.set_len(size).unwrap();
    file.write_all_at(&vec![1; MIB as usize], MIB).unwrap();
    file.write_all_at(&vec![2; (MIB / 2) as usize], 5 * MIB)
        .unwrap();
    file.sync_all().unwrap();
    let map = SparseMap::probe(&file, size).unwrap();
    let within = |a: u64, b: u64| map.data_in(a, b).collect::<Vec<_>>();
    if !seek_data_supported(&file) {
        assert_eq!(within(MIB, 2 * MIB), vec![MIB..2 * MIB]);
        return;
    }
    assert_eq!(within(0, 4 * MIB), vec![MIB..2 * MIB]);
    assert_eq!(within(4 * MIB, 8 * MIB), vec![5 * MIB..5 * MIB + MIB / 2]);
    assert_eq!(
        within(MIB + MIB / 2, 5 * MIB + 1000),
        vec![MIB + MIB / 2..2 * MIB, 5 * MIB..5 * MIB + 1000]
    );
    assert_eq!(within(8 * MIB, size), vec![]);
    assert_eq!(within(3 * MIB, 3 * MIB), vec![]);
}
