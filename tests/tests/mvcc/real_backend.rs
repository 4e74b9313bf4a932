//! The model-based sequence on the real copy-on-write B+tree backend (a file in a temp dir),
//! with commits, close and reopen: MVCC's restore path against real pages.

use ringkv_engine::{Backend, BackendOptions, BatchWriter, IoKind, Lessor, MvccStore, new_vfs};

use crate::model::run_model;

#[test]
fn store_matches_model_on_real_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("member/snap/db");
    let vfs = new_vfs(IoKind::Std).expect("vfs");
    let mut backend: Option<Backend> = None;
    run_model(9, 1200, |old: Option<MvccStore<BatchWriter>>| {
        if let Some(mut s) = old {
            s.commit().expect("commit");
            drop(s);
            backend = None;
        }
        let b = Backend::open(vfs.clone(), &path, BackendOptions::default()).expect("open backend");
        let writer = b.batch().expect("writer");
        backend = Some(b);
        MvccStore::open(writer, Lessor::default()).expect("open store")
    });
}
