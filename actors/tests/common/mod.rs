//! Helpers shared by the actor tests.

use std::path::PathBuf;

/// The runtime library, or `None` (after saying SKIP) when the test cannot run here.
pub fn ort_library(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        Some(path) if path.is_file() => Some(path),
        _ if std::env::var("STING_REQUIRE_ORT").is_ok_and(|v| v == "1") => {
            panic!(
                "{test}: ORT_DYLIB_PATH must name the ONNX Runtime library (STING_REQUIRE_ORT=1)"
            )
        }
        _ => {
            eprintln!("SKIP {test}: set ORT_DYLIB_PATH to the ONNX Runtime library to run it");
            None
        }
    }
}
