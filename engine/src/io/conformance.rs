//! The behaviour every [`Vfs`] implementation must show (the contract in `io/mod.rs`), as one
//! test body run against each implementation by that implementation's tests.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use super::{AlignedBuf, DIRECT_ALIGN, OpenOptions, Vfs};

/// Runs every check below in `dir` (which must be empty).
pub(crate) fn run_all(vfs: &dyn Vfs, dir: &Path) {
    direct_io_round_trip_and_alignment(vfs, dir);
    buffered_io_and_end_of_file(vfs, dir);
    vectored_writes(vfs, dir);
    lengths_and_allocation(vfs, dir);
    directory_entries(vfs, dir);
}

fn direct_io_round_trip_and_alignment(vfs: &dyn Vfs, dir: &Path) {
    let path = dir.join("direct");
    let f = vfs
        .open(&path, OpenOptions::read_write().create(true).direct(true))
        .unwrap();
    f.allocate(0, 1 << 20).unwrap();
    assert_eq!(f.size().unwrap(), 1 << 20);

    // Three blocks with distinct contents, written with and without the linked sync.
    let mut buf = AlignedBuf::zeroed(3 * DIRECT_ALIGN);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    f.write_at_and_sync(&buf, 8192).unwrap();
    f.write_at(&buf[..DIRECT_ALIGN], 64 * 1024).unwrap();
    f.sync_data().unwrap();

    let mut back = AlignedBuf::zeroed(3 * DIRECT_ALIGN);
    assert_eq!(f.read_at(&mut back, 8192).unwrap(), back.len());
    assert_eq!(&back[..], &buf[..]);
    let mut one = AlignedBuf::zeroed(DIRECT_ALIGN);
    f.read_exact_at(&mut one, 64 * 1024).unwrap();
    assert_eq!(&one[..], &buf[..DIRECT_ALIGN]);
    // Untouched preallocated space reads as zeros.
    f.read_exact_at(&mut one, 0).unwrap();
    assert!(one.iter().all(|&b| b == 0));

    // Misaligned length, offset and address are caller bugs reported as EINVAL.
    let einval = Some(libc::EINVAL);
    assert_eq!(
        f.write_at(&buf[..100], 0).unwrap_err().raw_os_error(),
        einval
    );
    assert_eq!(
        f.write_at(&buf[..DIRECT_ALIGN], 512)
            .unwrap_err()
            .raw_os_error(),
        einval
    );
    let misaligned = &buf[1..DIRECT_ALIGN + 1];
    assert_eq!(
        f.write_at(misaligned, 0).unwrap_err().raw_os_error(),
        einval
    );
    assert_eq!(
        f.write_at_and_sync(&buf[..100], 0)
            .unwrap_err()
            .raw_os_error(),
        einval
    );
    assert_eq!(
        f.read_at(&mut one[..100], 0).unwrap_err().raw_os_error(),
        einval
    );
}

fn buffered_io_and_end_of_file(vfs: &dyn Vfs, dir: &Path) {
    let path = dir.join("buffered");
    let f = vfs
        .open(&path, OpenOptions::read_write().create(true))
        .unwrap();
    f.write_at_and_sync(b"hello, world", 3).unwrap();
    assert_eq!(f.size().unwrap(), 15);
    let mut back = [0xffu8; 32];
    // Short read only at end of file; the hole before the data reads as zeros.
    assert_eq!(f.read_at(&mut back, 0).unwrap(), 15);
    assert_eq!(&back[..3], &[0, 0, 0]);
    assert_eq!(&back[3..15], b"hello, world");
    assert_eq!(f.read_at(&mut back, 15).unwrap(), 0);
    let err = f.read_exact_at(&mut back, 10).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

    // A second handle sees the data; a read-only handle cannot write.
    let ro = vfs.open(&path, OpenOptions::read_only()).unwrap();
    let mut five = [0u8; 5];
    ro.read_exact_at(&mut five, 3).unwrap();
    assert_eq!(&five, b"hello");
    assert!(ro.write_at(b"x", 0).is_err());
}

/// `write_vectored_at` writes exactly the concatenation, across more slices than one `pwritev`
/// takes (1,024), with empty and odd-sized slices among them.
fn vectored_writes(vfs: &dyn Vfs, dir: &Path) {
    let path = dir.join("vectored");
    let f = vfs
        .open(&path, OpenOptions::read_write().create(true))
        .unwrap();
    let pieces: Vec<Vec<u8>> = (0..2500u32)
        .map(|i| {
            let len = [0, 1, 7, 4096, 13][i as usize % 5];
            (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
        })
        .collect();
    let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let want = slices.concat();
    f.write_vectored_at(&slices, 100).unwrap();
    f.write_vectored_at(&[], 5).unwrap();
    f.sync_data().unwrap();
    assert_eq!(f.size().unwrap(), 100 + want.len() as u64);
    let mut back = vec![0u8; want.len()];
    f.read_exact_at(&mut back, 100).unwrap();
    assert!(back == want, "vectored write read back differently");
}

fn lengths_and_allocation(vfs: &dyn Vfs, dir: &Path) {
    let path = dir.join("lengths");
    let f = vfs
        .open(&path, OpenOptions::read_write().create(true))
        .unwrap();
    assert_eq!(f.size().unwrap(), 0);
    f.write_at(&[7u8; 100], 0).unwrap();
    f.set_len(10).unwrap();
    assert_eq!(f.size().unwrap(), 10);
    f.set_len(50).unwrap();
    let mut back = [0xffu8; 50];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[..10], &[7u8; 10]);
    assert!(
        back[10..].iter().all(|&b| b == 0),
        "extension reads as zeros"
    );
    f.allocate(0, 4096).unwrap();
    assert_eq!(f.size().unwrap(), 4096);
    // Allocating inside the file keeps its length and contents.
    f.allocate(0, 100).unwrap();
    assert_eq!(f.size().unwrap(), 4096);
    f.read_exact_at(&mut back[..10], 0).unwrap();
    assert_eq!(&back[..10], &[7u8; 10]);
}

fn directory_entries(vfs: &dyn Vfs, dir: &Path) {
    let sub = dir.join("sub/deeper");
    vfs.create_dir_all(&sub).unwrap();
    vfs.sync_dir(dir).unwrap();
    assert!(vfs.exists(&sub));

    let a = sub.join("a");
    let b = sub.join("b");
    let missing = vfs.open(&a, OpenOptions::read_only()).err().unwrap();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    vfs.open(&a, OpenOptions::read_write().create_new(true))
        .unwrap()
        .write_at(b"A", 0)
        .unwrap();
    let exists = vfs
        .open(&a, OpenOptions::read_write().create_new(true))
        .err()
        .unwrap();
    assert_eq!(exists.kind(), io::ErrorKind::AlreadyExists);
    vfs.open(&b, OpenOptions::read_write().create(true))
        .unwrap()
        .write_at(b"B", 0)
        .unwrap();
    let mut names = vfs.list_dir(&sub).unwrap();
    names.sort();
    assert_eq!(names, vec![OsString::from("a"), OsString::from("b")]);

    // rename replaces the target atomically.
    vfs.rename(&a, &b).unwrap();
    vfs.sync_dir(&sub).unwrap();
    assert!(!vfs.exists(&a));
    let mut one = [0u8; 1];
    vfs.open(&b, OpenOptions::read_only())
        .unwrap()
        .read_exact_at(&mut one, 0)
        .unwrap();
    assert_eq!(&one, b"A");

    vfs.remove_file(&b).unwrap();
    vfs.sync_dir(&sub).unwrap();
    assert!(!vfs.exists(&b));
    assert!(vfs.list_dir(&sub).unwrap().is_empty());
    assert_eq!(
        vfs.remove_file(&b).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn fault_vfs_passes_the_shared_behaviour_suite() {
        let vfs = crate::io::FaultVfs::new();
        let dir = std::path::Path::new("/conformance");
        crate::io::Vfs::create_dir_all(&vfs, dir).unwrap();
        super::run_all(&vfs, dir);
    }
}
