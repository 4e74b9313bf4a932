//! `compare`: etcd and ringkv side by side.

use crate::cli::{CompareArgs, Global};

pub fn run_compare(_g: &Global, _a: &CompareArgs) -> Result<(), String> {
    Err("compare is not built yet".to_owned())
}
