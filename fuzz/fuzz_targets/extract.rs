//! Any bytes, as any kind of document: detection and extraction must answer (text or an
//! error) without panicking, aborting, or passing their budget of memory and time.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sting_extract::{detect, extract, DocumentKind, ExtractLimits};

/// Tight enough that the fuzzer's own memory and time limits catch any escape from them.
const LIMITS: ExtractLimits = ExtractLimits {
    max_output_ratio: 16,
    min_output_bytes: 1 << 20,
    max_output_bytes: 16 << 20,
    timeout: Duration::from_secs(5),
};

const NAMES: [&str; 4] = ["upload.bin", "notes.md", "table.csv", "page.html"];

fuzz_target!(|input: &[u8]| {
    // The first byte picks the kind (and the name detection sees); the rest is the file.
    let Some((&selector, bytes)) = input.split_first() else {
        return;
    };
    let kind = DocumentKind::ALL[usize::from(selector) % DocumentKind::ALL.len()];
    let name = NAMES[usize::from(selector >> 4) % NAMES.len()];
    let _ = detect(bytes, name);
    if let Ok(extracted) = extract(kind, bytes, &LIMITS) {
        let text: usize = extracted.sections.iter().map(|s| s.text.len()).sum();
        let allowed = (bytes.len() as u64 * LIMITS.max_output_ratio).max(LIMITS.min_output_bytes);
        assert!(text as u64 <= allowed.min(LIMITS.max_output_bytes));
    }
});
