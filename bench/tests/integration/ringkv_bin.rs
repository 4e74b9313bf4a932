//! The `ringkv` binary of this workspace, for the tests that run the bench against a ringkv node.
//!
//! Cargo sets `CARGO_BIN_EXE_*` only for the binaries of the package under test, so the binary
//! is built here with `cargo build -p ringkv-net --bin ringkv`, in the profile and target
//! directory of the running test binary, once per test process. It is then copied to a private
//! path named by its size and mtime: a later build into a shared target directory must not
//! replace the file a running test executes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

/// Path of a private copy of the freshly built `ringkv` binary.
pub fn ringkv_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_and_copy).clone()
}

fn build_and_copy() -> PathBuf {
    // The test binary is <target>/<profile>/deps/<name>.
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("<target>").to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name")
        .to_owned();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.args(["build", "--quiet", "-p", "ringkv-net", "--bin", "ringkv"])
        .arg("--manifest-path")
        .arg(&workspace)
        .env("CARGO_TARGET_DIR", &target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo build for the ringkv binary");
    assert!(status.success(), "cargo build of the ringkv binary failed");
    let built = profile_dir.join("ringkv");
    let meta = std::fs::metadata(&built)
        .unwrap_or_else(|e| panic!("{} after the build: {e}", built.display()));
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let private =
        std::env::temp_dir().join(format!("ringkv-bench-under-test-{}-{mtime_ns}", meta.len()));
    if !private.exists() {
        // Copy then rename, so concurrent test processes never run a half-written file.
        let tmp = private.with_extension(format!("tmp{}", std::process::id()));
        std::fs::copy(&built, &tmp).expect("copy the ringkv binary");
        std::fs::rename(&tmp, &private).expect("rename the ringkv copy");
    }
    private
}
