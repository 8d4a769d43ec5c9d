//! Document ingestion: from an uploaded file's bytes to embeddable chunks. [`extract`] detects
//! the kind of a file and turns it into text sections with page / heading attribution;
//! [`chunk`] cuts those sections into token-bounded, overlapping chunks for the embedding model;
//! [`pipeline`] runs those steps and the embedding as supervised actors; [`blobs`] keeps the
//! originals (encrypted at rest for jars that ask for it).

pub mod blobs;
pub mod chunk;
pub mod pipeline;
/// Extraction is its own crate (pure functions over bytes, fuzzed on their own).
pub use sting_extract as extract;
#[cfg(feature = "samples")]
pub use sting_extract::samples;
