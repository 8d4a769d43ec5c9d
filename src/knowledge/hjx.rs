//! HJX: a honey jar in one file, to move it between nodes or users.
//!
//! A gzip'd tar holding, for each exported document, `documents/<id>/original` (its original
//! bytes, never encrypted) and `documents/<id>/chunks.jsonl` (one JSON object per chunk: `seq`,
//! `text`, `page`, `section`, `token_count`, and `embedding` as base64 of little-endian f32s),
//! then `manifest.json`: the jar, the embedding model (name and dimensions) and, per document,
//! its metadata, size, SHA-256 and the paths of its two entries. Readers must not depend on the
//! order of the entries.
//!
//! Reading trusts nothing: only regular files whose paths are relative and made of plain names,
//! only the paths the manifest names, at most [`MAX_ENTRIES`] of them, at most
//! [`Limits::max_unpacked_bytes`] unpacked (counted while decompressing, so a gzip bomb stops at
//! the limit), a supported version, every original matching its size and SHA-256, every chunk in
//! order with an embedding of the manifest's dimensions. Entries are only ever looked up by
//! name: nothing is written to disk by path.
//!
//! Reading holds only the manifest (at most [`MAX_MANIFEST_BYTES`]) in memory: every other
//! entry is written, as it is decompressed, to a file of its own (named by its position) in a
//! private temporary directory, removed again with the [`Archive`] (or at once when the archive
//! is refused). Originals are checked by streaming them through SHA-256 and chunk files are
//! parsed line by line; an import then reads one document's original and chunks at a time.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sting_store::{Chunk, Document, DocumentId, HoneyJar, JarId};

pub const FORMAT: &str = "hjx";
/// The version this node writes and reads.
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
/// Most documents one archive may hold.
pub const MAX_DOCUMENTS: usize = 50_000;
/// Most entries: two per document and the manifest.
pub const MAX_ENTRIES: usize = 2 * MAX_DOCUMENTS + 1;
/// Largest embedding an archive may declare.
const MAX_DIMENSIONS: usize = 65_536;
/// Longest entry path.
const MAX_PATH_BYTES: usize = 256;
/// What errors name when no single entry is at fault.
const WHOLE_ARCHIVE: &str = "(archive)";

/// Why an archive cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum HjxError {
    /// Not a gzip'd tar at all (or a damaged one).
    #[error("not a readable gzip'd tar archive: {0}")]
    Malformed(String),
    /// A readable archive that breaks the format's rules; `entry` names the offending entry.
    #[error("{entry}: {reason}")]
    Invalid { entry: String, reason: String },
    /// The node could not write or read back the unpacked entries (its disk, not the archive).
    #[error("unpacking the archive: {0}")]
    Io(io::Error),
}

fn invalid(entry: impl Into<String>, reason: impl Into<String>) -> HjxError {
    HjxError::Invalid {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"hjx"`.
    pub format: String,
    pub version: u32,
    /// RFC 3339.
    pub exported_at: String,
    pub sting_version: String,
    pub honey_jar: JarEntry,
    pub embedding_model: EmbeddingModel,
    pub documents: Vec<DocumentEntry>,
    /// Documents of the jar that were not exported (not processed), for the record.
    #[serde(default)]
    pub skipped: Vec<SkippedDocument>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JarEntry {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The exporter's visibility (informative: imports are private).
    pub visibility: String,
    pub settings: SettingsEntry,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SettingsEntry {
    pub allow_search: bool,
    pub allow_export: bool,
    pub encryption_enabled: bool,
}

/// The model that embedded the chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingModel {
    pub name: String,
    pub dimensions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentEntry {
    /// The document's id in the exporting node.
    pub id: DocumentId,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub filename: String,
    /// pdf, docx, markdown, html, text, json or csv.
    pub kind: String,
    pub content_type: String,
    /// Bytes of the original.
    pub size: u64,
    /// Hex SHA-256 of the original.
    pub sha256: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: DocumentMetadata,
    pub chunk_count: u64,
    /// Path of the original's entry.
    pub original: String,
    /// Path of the chunks' entry.
    pub chunks: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DocumentMetadata {
    pub pages: Option<u32>,
    #[serde(default)]
    pub word_count: u64,
    pub language: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedDocument {
    pub id: DocumentId,
    pub title: String,
    pub filename: String,
    pub status: String,
    pub error: Option<String>,
}

/// One line of `chunks.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub seq: u32,
    pub text: String,
    pub page: Option<u32>,
    pub section: Option<String>,
    pub token_count: u32,
    #[serde(with = "base64_f32")]
    pub embedding: Vec<f32>,
}

impl From<Chunk> for ChunkRecord {
    fn from(chunk: Chunk) -> ChunkRecord {
        ChunkRecord {
            seq: chunk.seq,
            text: chunk.text,
            page: chunk.page,
            section: chunk.section,
            token_count: chunk.token_count,
            embedding: chunk.embedding,
        }
    }
}

impl ChunkRecord {
    /// The chunk as stored for `document` of `jar`.
    pub fn into_chunk(self, jar: JarId, document: DocumentId) -> Chunk {
        Chunk {
            document_id: document,
            jar_id: jar,
            seq: self.seq,
            text: self.text,
            page: self.page,
            section: self.section,
            token_count: self.token_count,
            embedding: self.embedding,
        }
    }
}

/// Embeddings as base64 of their little-endian f32s: exact and compact.
mod base64_f32 {
    use super::BASE64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(vector: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        use serde::de::Error;
        let text = <&str>::deserialize(deserializer)?;
        let bytes = BASE64.decode(text).map_err(D::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom(
                "embedding bytes are not a whole number of f32s",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// The entry paths of a document.
fn document_paths(id: DocumentId) -> (String, String) {
    (
        format!("documents/{id}/original"),
        format!("documents/{id}/chunks.jsonl"),
    )
}

/// Builds an archive in memory, document by document (compressing as it goes), manifest last.
pub struct Writer {
    tar: tar::Builder<GzEncoder<Vec<u8>>>,
    exported_at: DateTime<Utc>,
    documents: Vec<DocumentEntry>,
    skipped: Vec<SkippedDocument>,
}

impl Writer {
    pub fn new(exported_at: DateTime<Utc>) -> Writer {
        Writer {
            tar: tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::default())),
            exported_at,
            documents: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Adds a processed document: its original (plain bytes) and its chunks in order.
    pub fn add_document(
        &mut self,
        document: &Document,
        original: &[u8],
        chunks: Vec<Chunk>,
    ) -> io::Result<()> {
        let (original_path, chunks_path) = document_paths(document.id);
        self.append(&original_path, original)?;
        let chunk_count = chunks.len() as u64;
        let mut lines = Vec::new();
        for chunk in chunks {
            serde_json::to_writer(&mut lines, &ChunkRecord::from(chunk))?;
            lines.push(b'\n');
        }
        self.append(&chunks_path, &lines)?;
        self.documents.push(DocumentEntry {
            id: document.id,
            title: document.title.clone(),
            description: document.description.clone(),
            filename: document.filename.clone(),
            kind: document.kind.clone(),
            content_type: document.mime_type.clone(),
            size: original.len() as u64,
            sha256: hex::encode(Sha256::digest(original)),
            tags: document.tags.clone(),
            metadata: DocumentMetadata {
                pages: document.pages,
                word_count: document.word_count,
                language: document.language.clone(),
            },
            chunk_count,
            original: original_path,
            chunks: chunks_path,
        });
        Ok(())
    }

    /// Records a document that is not exported.
    pub fn skip(&mut self, document: &Document) {
        self.skipped.push(SkippedDocument {
            id: document.id,
            title: document.title.clone(),
            filename: document.filename.clone(),
            status: document.status.as_str().to_owned(),
            error: document.error.clone(),
        });
    }

    /// Documents added so far.
    pub fn document_count(&self) -> usize {
        self.documents.len()
    }

    /// Writes the manifest and returns the archive.
    pub fn finish(
        mut self,
        jar: &HoneyJar,
        embedding_model: EmbeddingModel,
    ) -> io::Result<Vec<u8>> {
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            version: VERSION,
            exported_at: self
                .exported_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            sting_version: env!("CARGO_PKG_VERSION").to_owned(),
            honey_jar: JarEntry {
                name: jar.name.clone(),
                description: jar.description.clone(),
                tags: jar.tags.clone(),
                visibility: jar.visibility.as_str().to_owned(),
                settings: SettingsEntry {
                    allow_search: jar.settings.allow_search,
                    allow_export: jar.settings.allow_export,
                    encryption_enabled: jar.settings.encryption_enabled,
                },
            },
            embedding_model,
            documents: std::mem::take(&mut self.documents),
            skipped: std::mem::take(&mut self.skipped),
        };
        let json = serde_json::to_vec_pretty(&manifest)?;
        self.append(MANIFEST, &json)?;
        self.tar.into_inner()?.finish()
    }

    fn append(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(self.exported_at.timestamp().max(0) as u64);
        self.tar.append_data(&mut header, path, data)
    }
}

/// Largest `manifest.json`, the one entry held in memory whole: room for the metadata of
/// [`MAX_DOCUMENTS`] documents.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Bounds on what reading an archive may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// All entries (with their tar headers) once decompressed.
    pub max_unpacked_bytes: u64,
    /// One original (the node's upload limit).
    pub max_original_bytes: u64,
}

/// A checked archive, ready to import: what its manifest says, and its entries unpacked to
/// disk, read back one document at a time ([`Archive::original`], [`Archive::chunks`]). The
/// entries' directory is removed when the archive is dropped.
#[derive(Debug)]
pub struct Archive {
    pub honey_jar: JarEntry,
    pub embedding_model: EmbeddingModel,
    /// In the manifest's order; the index of a document is its place here.
    pub documents: Vec<DocumentEntry>,
    limits: Limits,
    unpacked: Unpacked,
}

impl Archive {
    /// The private directory holding the unpacked entries (gone once the archive is dropped).
    pub fn dir(&self) -> &Path {
        self.unpacked.dir.path()
    }

    /// The original of `documents[index]`, read from disk (at most the upload limit) and
    /// checked against the manifest again.
    pub fn original(&self, index: usize) -> Result<Vec<u8>, HjxError> {
        let entry = &self.documents[index];
        let mut bytes = Vec::new();
        self.unpacked
            .open(&entry.original)?
            .take(self.limits.max_original_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(HjxError::Io)?;
        check_original(entry, bytes.as_slice(), self.limits)?;
        Ok(bytes)
    }

    /// The chunks of `documents[index]`, read from disk and checked again.
    pub fn chunks(&self, index: usize) -> Result<Vec<ChunkRecord>, HjxError> {
        let entry = &self.documents[index];
        let mut chunks = Vec::new();
        read_chunks(
            entry,
            self.unpacked.open(&entry.chunks)?,
            self.embedding_model.dimensions,
            |chunk| chunks.push(chunk),
        )?;
        Ok(chunks)
    }
}

/// An archive's entries on disk: each in a file of its own, named by its position in the
/// archive (never by its path), in a private (0700) temporary directory removed on drop; and
/// the manifest, the one entry held in memory.
#[derive(Debug)]
struct Unpacked {
    dir: tempfile::TempDir,
    /// Entry path → its file.
    files: BTreeMap<String, PathBuf>,
    manifest: Option<Vec<u8>>,
}

impl Unpacked {
    fn open(&self, path: &str) -> Result<File, HjxError> {
        let file = self
            .files
            .get(path)
            .ok_or_else(|| invalid(path, "missing (named by the manifest)"))?;
        File::open(file).map_err(HjxError::Io)
    }
}

/// Reads and checks a whole archive (see the module's rules), unpacking its entries into a new
/// temporary directory under `temp_in`; the first violation is the error, and then nothing is
/// left on disk. Each original is checked by streaming it through SHA-256 and each chunk file
/// is parsed line by line, one document at a time: what this holds in memory is the manifest
/// and one chunk line, whatever the archive's size.
pub fn read(archive: impl Read, temp_in: &Path, limits: Limits) -> Result<Archive, HjxError> {
    let mut unpacked = unpack(archive, temp_in, limits)?;
    let manifest = parse_manifest(unpacked.manifest.take())?;
    let mut ids = HashSet::new();
    let mut named = HashSet::new();
    for (i, document) in manifest.documents.iter().enumerate() {
        if !ids.insert(document.id) {
            return Err(invalid(
                MANIFEST,
                format!("documents[{i}]: id {} appears twice", document.id),
            ));
        }
        for path in [&document.original, &document.chunks] {
            if !is_plain_relative(path) || path == MANIFEST || !named.insert(path.as_str()) {
                return Err(invalid(
                    MANIFEST,
                    format!("documents[{i}]: {path:?} is not a plain relative path of its own"),
                ));
            }
        }
    }
    if let Some(stray) = unpacked
        .files
        .keys()
        .find(|path| !named.contains(path.as_str()))
    {
        return Err(invalid(stray.as_str(), "not named by the manifest"));
    }
    let dimensions = manifest.embedding_model.dimensions;
    for entry in &manifest.documents {
        let original = unpacked.open(&entry.original)?;
        let chunks = unpacked.open(&entry.chunks)?;
        check_original(entry, original, limits)?;
        read_chunks(entry, chunks, dimensions, drop)?;
    }
    Ok(Archive {
        honey_jar: manifest.honey_jar,
        embedding_model: manifest.embedding_model,
        documents: manifest.documents,
        limits,
        unpacked,
    })
}

/// Whether `path` is relative and made only of plain names (ASCII letters, digits, `.`, `-`,
/// `_`; no empty, `.` or `..` component): nothing that could mean a root, a drive, a parent or
/// anything outside the archive.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && path.split('/').all(|name| {
            !name.is_empty()
                && name != "."
                && name != ".."
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
}

/// Decompresses at most `left` bytes; beyond, fails and raises `exceeded`.
struct Bounded<'a, R> {
    inner: R,
    left: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte beyond the limit is enough to know it is exceeded.
        let room = usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX);
        let len = buf.len().min(room);
        let read = self.inner.read(&mut buf[..len])?;
        if read as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

/// The archive's entries, each checked as it is decompressed and written to its own file in a
/// new private directory under `temp_in` (removed again on any error).
fn unpack(mut archive: impl Read, temp_in: &Path, limits: Limits) -> Result<Unpacked, HjxError> {
    let mut magic = [0u8; 2];
    match archive.read_exact(&mut magic) {
        Ok(()) if magic == [0x1f, 0x8b] => {}
        Ok(()) => return Err(HjxError::Malformed("not a gzip stream".into())),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(HjxError::Malformed("not a gzip stream".into()))
        }
        Err(err) => return Err(HjxError::Io(err)),
    }
    let dir = tempfile::Builder::new()
        .prefix("import-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(temp_in)
        .map_err(HjxError::Io)?;
    let exceeded = Cell::new(false);
    let mut archive = tar::Archive::new(Bounded {
        inner: GzDecoder::new(io::Cursor::new(magic).chain(archive)),
        left: limits.max_unpacked_bytes,
        exceeded: &exceeded,
    });
    let broken = |entry: &str, err: io::Error| {
        if exceeded.get() {
            invalid(
                entry,
                format!(
                    "the archive unpacks to more than {} bytes",
                    limits.max_unpacked_bytes
                ),
            )
        } else {
            HjxError::Malformed(err.to_string())
        }
    };
    let mut files = BTreeMap::new();
    let mut manifest = None;
    let mut count = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    let entries = archive
        .entries()
        .map_err(|err| broken(WHOLE_ARCHIVE, err))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| broken(WHOLE_ARCHIVE, err))?;
        let raw = entry.path_bytes();
        let path = match std::str::from_utf8(&raw) {
            Ok(path) if is_plain_relative(path) => path.to_owned(),
            _ => {
                return Err(invalid(
                    String::from_utf8_lossy(&raw),
                    "not a plain relative path (no `..`, no absolute path, only names of \
                     letters, digits, `.`, `-` and `_`)",
                ))
            }
        };
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(invalid(
                path,
                format!("only regular files are allowed, not {kind:?} entries"),
            ));
        }
        if count == MAX_ENTRIES {
            return Err(invalid(path, format!("more than {MAX_ENTRIES} entries")));
        }
        count += 1;
        if files.contains_key(&path) || (path == MANIFEST && manifest.is_some()) {
            return Err(invalid(path, "appears twice"));
        }
        if path == MANIFEST {
            let too_large = || invalid(MANIFEST, format!("larger than {MAX_MANIFEST_BYTES} bytes"));
            if entry.size() > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            let mut data = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut data)
                .map_err(|err| broken(&path, err))?;
            if data.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            manifest = Some(data);
            continue;
        }
        let file = dir.path().join(count.to_string());
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(HjxError::Io)?;
        loop {
            let read = entry.read(&mut buffer).map_err(|err| broken(&path, err))?;
            if read == 0 {
                break;
            }
            out.write_all(&buffer[..read]).map_err(HjxError::Io)?;
        }
        files.insert(path, file);
    }
    Ok(Unpacked {
        dir,
        files,
        manifest,
    })
}

/// The format and version, read before the rest so that another version is named as such.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    format: serde_json::Value,
    #[serde(default)]
    version: serde_json::Value,
}

fn parse_manifest(bytes: Option<Vec<u8>>) -> Result<Manifest, HjxError> {
    let bytes = bytes.ok_or_else(|| invalid(MANIFEST, "missing"))?;
    let head: Head =
        serde_json::from_slice(&bytes).map_err(|err| invalid(MANIFEST, err.to_string()))?;
    if head.format != FORMAT {
        return Err(invalid(MANIFEST, "format must be \"hjx\""));
    }
    if head.version != VERSION {
        return Err(invalid(
            MANIFEST,
            format!(
                "unsupported version {} (this node reads version {VERSION})",
                head.version
            ),
        ));
    }
    let manifest: Manifest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
            .map_err(|err| invalid(MANIFEST, err.to_string()))?;
    if !(1..=MAX_DIMENSIONS).contains(&manifest.embedding_model.dimensions) {
        return Err(invalid(
            MANIFEST,
            format!("embedding_model.dimensions must be 1 to {MAX_DIMENSIONS}"),
        ));
    }
    if manifest.documents.len() > MAX_DOCUMENTS {
        return Err(invalid(
            MANIFEST,
            format!("more than {MAX_DOCUMENTS} documents"),
        ));
    }
    Ok(manifest)
}

/// Checks an original against its manifest entry, streaming it through SHA-256 (at most one
/// byte beyond the upload limit is read).
fn check_original(
    entry: &DocumentEntry,
    original: impl Read,
    limits: Limits,
) -> Result<(), HjxError> {
    let mut hasher = Sha256::new();
    let size = io::copy(
        &mut original.take(limits.max_original_bytes.saturating_add(1)),
        &mut hasher,
    )
    .map_err(HjxError::Io)?;
    if size > limits.max_original_bytes {
        return Err(invalid(
            &entry.original,
            format!(
                "larger than the upload limit of {} bytes",
                limits.max_original_bytes
            ),
        ));
    }
    if size != entry.size {
        return Err(invalid(
            &entry.original,
            format!("{size} bytes, the manifest says {}", entry.size),
        ));
    }
    if !hex::encode(hasher.finalize()).eq_ignore_ascii_case(&entry.sha256) {
        return Err(invalid(
            &entry.original,
            "SHA-256 does not match the manifest",
        ));
    }
    Ok(())
}

/// Parses a chunk file line by line, handing each checked chunk to `each`.
fn read_chunks(
    entry: &DocumentEntry,
    file: impl Read,
    dimensions: usize,
    mut each: impl FnMut(ChunkRecord),
) -> Result<(), HjxError> {
    let at = |line: usize, reason: String| invalid(&entry.chunks, format!("line {line}: {reason}"));
    let mut reader = io::BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    let mut count: u64 = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(HjxError::Io)? == 0 {
            break;
        }
        number += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let chunk: ChunkRecord =
            serde_json::from_slice(&line).map_err(|err| at(number, err.to_string()))?;
        if u64::from(chunk.seq) != count {
            return Err(at(
                number,
                format!("seq {} where {count} was expected", chunk.seq),
            ));
        }
        if chunk.embedding.len() != dimensions {
            return Err(at(
                number,
                format!(
                    "the embedding has {} dimensions, the manifest says {dimensions}",
                    chunk.embedding.len()
                ),
            ));
        }
        if !chunk.embedding.iter().all(|x| x.is_finite()) {
            return Err(at(number, "the embedding is not finite".into()));
        }
        count += 1;
        each(chunk);
    }
    if count != entry.chunk_count {
        return Err(invalid(
            &entry.chunks,
            format!("{count} chunks, the manifest says {}", entry.chunk_count),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sting_store::{DocumentStatus, JarSettings, Timestamp, Visibility};
    use uuid::Uuid;

    const DIMENSIONS: usize = 4;
    const LIMITS: Limits = Limits {
        max_unpacked_bytes: 1 << 20,
        max_original_bytes: 1 << 16,
    };

    fn jar() -> HoneyJar {
        HoneyJar {
            id: Uuid::new_v4(),
            owner_id: Uuid::new_v4(),
            name: "Field guide".into(),
            description: "Bees".into(),
            visibility: Visibility::Shared,
            tags: vec!["bees".into()],
            settings: JarSettings {
                allow_search: true,
                allow_export: false,
                encryption_enabled: true,
            },
            shared_with: Vec::new(),
            wrapped_key: None,
            document_count: 1,
            embedding_count: 2,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn document(jar: &HoneyJar, status: DocumentStatus) -> Document {
        Document {
            id: Uuid::new_v4(),
            jar_id: jar.id,
            uploader_id: jar.owner_id,
            filename: "notes.md".into(),
            title: "Notes".into(),
            description: String::new(),
            tags: vec!["hive".into()],
            size: 0,
            mime_type: "text/markdown".into(),
            kind: "markdown".into(),
            sha256: String::new(),
            status,
            progress: 100,
            error: None,
            chunk_count: 2,
            embedding_count: 2,
            processing_ms: Some(5),
            processing_attempts: 1,
            pages: None,
            word_count: 6,
            language: Some("en".into()),
            uploaded_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn chunks(document: &Document) -> Vec<Chunk> {
        (0..2)
            .map(|seq| Chunk {
                document_id: document.id,
                jar_id: document.jar_id,
                seq,
                text: format!("chunk {seq} of the notes"),
                page: Some(seq + 1),
                section: (seq == 1).then(|| "More".to_owned()),
                token_count: 5,
                embedding: vec![0.5, -0.25, f32::MIN_POSITIVE, 1.0e-7 * seq as f32],
            })
            .collect()
    }

    const ORIGINAL: &[u8] = b"# Notes\n\nThe meadow is quiet in winter.";

    /// A valid archive of one processed document (and one skipped).
    fn sample() -> (Vec<u8>, Document) {
        let jar = jar();
        let processed = document(&jar, DocumentStatus::Processed);
        let mut writer = Writer::new(Utc::now());
        writer
            .add_document(&processed, ORIGINAL, chunks(&processed))
            .unwrap();
        writer.skip(&document(&jar, DocumentStatus::Failed));
        let model = EmbeddingModel {
            name: "fixture-embed".into(),
            dimensions: DIMENSIONS,
        };
        (writer.finish(&jar, model).unwrap(), processed)
    }

    /// A gzip'd tar of these entries, names written into the headers as given (even `..` or
    /// absolute ones, which `Header::set_path` refuses).
    fn pack(entries: &[(Vec<u8>, tar::EntryType, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Default::default()));
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, data.as_slice()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn unpack_all(archive: &[u8]) -> Vec<(Vec<u8>, tar::EntryType, Vec<u8>)> {
        let mut reader = tar::Archive::new(GzDecoder::new(archive));
        reader
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                (
                    entry.path_bytes().into_owned(),
                    entry.header().entry_type(),
                    data,
                )
            })
            .collect()
    }

    /// The sample archive with its entries passed through `edit` and `extra` appended.
    fn tampered(
        edit: impl Fn(&str, Vec<u8>) -> Vec<u8>,
        extra: Option<(&[u8], tar::EntryType)>,
    ) -> Vec<u8> {
        let (archive, _) = sample();
        let mut entries: Vec<_> = unpack_all(&archive)
            .into_iter()
            .map(|(name, kind, data)| {
                let data = edit(std::str::from_utf8(&name).unwrap(), data);
                (name, kind, data)
            })
            .collect();
        if let Some((name, kind)) = extra {
            entries.push((name.to_vec(), kind, b"payload".to_vec()));
        }
        pack(&entries)
    }

    /// Reads an archive, unpacking it under the system's temporary directory.
    fn open(archive: &[u8], limits: Limits) -> Result<Archive, HjxError> {
        read(archive, &std::env::temp_dir(), limits)
    }

    fn refused(archive: &[u8]) -> (String, String) {
        match open(archive, LIMITS) {
            Err(HjxError::Invalid { entry, reason }) => (entry, reason),
            other => panic!("expected an invalid archive, got {other:?}"),
        }
    }

    fn edit_manifest(edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        tampered(
            |name, data| {
                if name != MANIFEST {
                    return data;
                }
                let mut manifest: serde_json::Value = serde_json::from_slice(&data).unwrap();
                edit(&mut manifest);
                serde_json::to_vec(&manifest).unwrap()
            },
            None,
        )
    }

    #[test]
    fn archives_round_trip() {
        let (archive, processed) = sample();
        let imported = open(&archive, LIMITS).unwrap();
        assert_eq!(imported.honey_jar.name, "Field guide");
        assert_eq!(imported.honey_jar.visibility, "shared");
        assert!(imported.honey_jar.settings.encryption_enabled);
        assert_eq!(imported.embedding_model.dimensions, DIMENSIONS);
        let [document] = imported.documents.as_slice() else {
            panic!("one document: {imported:?}");
        };
        assert_eq!(document.id, processed.id);
        assert_eq!(document.title, "Notes");
        assert_eq!(document.metadata.language.as_deref(), Some("en"));
        assert_eq!(imported.original(0).unwrap(), ORIGINAL);
        let expected: Vec<ChunkRecord> = chunks(&processed)
            .into_iter()
            .map(ChunkRecord::from)
            .collect();
        let read_back = imported.chunks(0).unwrap();
        assert_eq!(read_back, expected, "embeddings are exact");
        let restored = read_back[1]
            .clone()
            .into_chunk(processed.jar_id, processed.id);
        assert_eq!(restored, chunks(&processed)[1]);

        let names: Vec<Vec<u8>> = unpack_all(&archive).into_iter().map(|e| e.0).collect();
        assert_eq!(names.last().unwrap(), MANIFEST.as_bytes(), "manifest last");
        let manifest: Manifest = serde_json::from_slice(
            &unpack_all(&archive)
                .into_iter()
                .find(|e| e.0 == MANIFEST.as_bytes())
                .unwrap()
                .2,
        )
        .unwrap();
        assert_eq!(manifest.skipped.len(), 1);
        assert_eq!(manifest.skipped[0].status, "failed");
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        for name in [
            &b"../x"[..],
            b"documents/../../etc/passwd",
            b"/etc/passwd",
            b"./manifest.json",
            b"documents//original",
            b"C:\\windows\\x",
        ] {
            let (entry, reason) = refused(&tampered(
                |_, data| data,
                Some((name, tar::EntryType::Regular)),
            ));
            assert_eq!(entry.as_bytes(), name);
            assert!(reason.contains("plain relative path"), "{reason}");
        }
    }

    #[test]
    fn links_and_special_entries_are_refused() {
        for kind in [
            tar::EntryType::Symlink,
            tar::EntryType::Link,
            tar::EntryType::Directory,
            tar::EntryType::Char,
            tar::EntryType::Fifo,
        ] {
            let (entry, reason) = refused(&tampered(
                |_, data| data,
                Some((b"documents/x/original", kind)),
            ));
            assert_eq!(entry, "documents/x/original");
            assert!(reason.contains("only regular files"), "{reason}");
        }
    }

    #[test]
    fn entries_the_manifest_does_not_name_are_refused() {
        let (entry, reason) = refused(&tampered(
            |_, data| data,
            Some((b"documents/extra/original", tar::EntryType::Regular)),
        ));
        assert_eq!(entry, "documents/extra/original");
        assert_eq!(reason, "not named by the manifest");
        // Named twice: the same path as two entries.
        let (archive, _) = sample();
        let mut entries = unpack_all(&archive);
        entries.insert(0, entries[0].clone());
        assert_eq!(refused(&pack(&entries)).1, "appears twice");
    }

    #[test]
    fn oversized_archives_stop_while_decompressing() {
        // A gzip bomb: 16 MiB of zeros in one entry, far beyond the limit, compresses to ~16 KiB.
        let bomb = pack(&[(
            b"documents/x/original".to_vec(),
            tar::EntryType::Regular,
            vec![0; 16 << 20],
        )]);
        assert!(bomb.len() < 1 << 20);
        let (entry, reason) = refused(&bomb);
        assert_eq!(entry, "documents/x/original");
        assert!(reason.contains("unpacks to more than"), "{reason}");
        // An original beyond the upload limit (within the unpacked limit).
        let (archive, _) = sample();
        let small = Limits {
            max_original_bytes: 8,
            ..LIMITS
        };
        match open(&archive, small) {
            Err(HjxError::Invalid { entry, reason }) => {
                assert!(entry.ends_with("/original"));
                assert!(reason.contains("upload limit"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The sample archive with one bit of its original flipped.
    fn altered_original() -> Vec<u8> {
        tampered(
            |name, mut data| {
                if name.ends_with("/original") {
                    data[0] ^= 1;
                }
                data
            },
            None,
        )
    }

    #[test]
    fn originals_must_match_their_sha256() {
        let altered = altered_original();
        let (entry, reason) = refused(&altered);
        assert!(entry.ends_with("/original"), "{entry}");
        assert!(reason.contains("SHA-256"), "{reason}");
    }

    #[test]
    fn manifests_and_chunks_are_checked() {
        let (entry, reason) = refused(&edit_manifest(|m| m["version"] = 2.into()));
        assert_eq!(entry, MANIFEST);
        assert!(reason.contains("unsupported version 2"), "{reason}");
        let (_, reason) = refused(&edit_manifest(|m| {
            m["embedding_model"]["dimensions"] = 8.into();
        }));
        assert!(reason.contains("8"), "{reason}");
        let (_, reason) = refused(&edit_manifest(|m| {
            m["documents"][0]["original"] = "../original".into();
        }));
        assert!(reason.contains("plain relative path"), "{reason}");
        let (_, reason) = refused(&edit_manifest(|m| m["documents"][0]["size"] = "x".into()));
        assert!(reason.contains("documents[0].size"), "{reason}");
        let (entry, _) = refused(&tampered(
            |name, data| if name == MANIFEST { Vec::new() } else { data },
            None,
        ));
        assert_eq!(entry, MANIFEST);
        let (entry, reason) = refused(&tampered(
            |name, data| {
                if name.ends_with(".jsonl") {
                    b"{\"seq\": 0, \"text\": \"x\"}\n".to_vec()
                } else {
                    data
                }
            },
            None,
        ));
        assert!(entry.ends_with("chunks.jsonl"));
        assert!(reason.starts_with("line 1:"), "{reason}");
    }

    /// The names in `dir`.
    fn listing(dir: &Path) -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entries_are_unpacked_to_a_private_directory_removed_afterwards() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let temp = tempfile::tempdir().unwrap();
        let (archive, _) = sample();
        let imported = read(archive.as_slice(), temp.path(), LIMITS).unwrap();
        // One directory of its own, private, holding the original and the chunks (each in its
        // own file, named by position); the manifest stays in memory only.
        assert_eq!(listing(temp.path()), [imported.dir().to_path_buf()]);
        assert_eq!(mode(imported.dir()), 0o700);
        let files = listing(imported.dir());
        assert_eq!(files.len(), 2, "{files:?}");
        let contents: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        assert!(
            contents.iter().any(|c| c == ORIGINAL),
            "the original on disk"
        );
        assert!(
            contents.iter().any(|c| c.starts_with(b"{\"seq\":0")),
            "the chunks on disk"
        );
        for file in &files {
            assert_eq!(mode(file), 0o600);
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_digit()),
                "named by position: {name}"
            );
        }
        // Read back on demand, then gone with the archive.
        assert_eq!(imported.original(0).unwrap(), ORIGINAL);
        assert_eq!(imported.chunks(0).unwrap().len(), 2);
        drop(imported);
        assert!(listing(temp.path()).is_empty());

        // Refused archives leave nothing behind either, wherever they fail.
        let bomb = pack(&[(
            b"documents/x/original".to_vec(),
            tar::EntryType::Regular,
            vec![0; 4 << 20],
        )]);
        let altered = altered_original();
        let traversal = tampered(|_, data| data, Some((b"../x", tar::EntryType::Regular)));
        let mut truncated = archive.clone();
        truncated.truncate(archive.len() / 2);
        for refused in [bomb, altered, traversal, truncated, b"not gzip".to_vec()] {
            assert!(read(refused.as_slice(), temp.path(), LIMITS).is_err());
            assert!(listing(temp.path()).is_empty());
        }
    }

    #[test]
    fn an_oversized_manifest_is_refused_before_it_is_read() {
        // A header claiming more than the manifest may hold (the data is never read).
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Default::default()));
        let mut header = tar::Header::new_ustar();
        header.set_path(MANIFEST).unwrap();
        header.set_size(MAX_MANIFEST_BYTES + 1);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, &b"{}"[..]).unwrap();
        let archive = builder.into_inner().unwrap().finish().unwrap();
        let limits = Limits {
            max_unpacked_bytes: 1 << 30,
            ..LIMITS
        };
        match open(&archive, limits) {
            Err(HjxError::Invalid { entry, reason }) => {
                assert_eq!(entry, MANIFEST);
                assert!(reason.contains("larger than"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_a_gzip_or_not_a_tar_is_malformed() {
        assert!(matches!(
            open(b"PK\x03\x04 a zip", LIMITS),
            Err(HjxError::Malformed(_))
        ));
        let mut gz = GzEncoder::new(Vec::new(), Default::default());
        io::Write::write_all(&mut gz, &[7u8; 2048]).unwrap();
        assert!(matches!(
            open(&gz.finish().unwrap(), LIMITS),
            Err(HjxError::Malformed(_))
        ));
    }
}
