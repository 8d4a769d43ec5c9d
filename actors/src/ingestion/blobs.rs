//! Document originals on the node's disk, encrypted at rest for jars that ask for it.
//!
//! Layout: `<dir>/<jar_id>/<document_id>`. Writes go to a temporary file renamed into place, so
//! a crash never leaves half a file under the final name.
//!
//! Encryption (jars with `encryption_enabled`): each jar has its own random 256-bit data key;
//! blobs are sealed with AES-256-GCM (a random 96-bit nonce per blob, stored before the
//! ciphertext; the document id is the associated data, so a blob cannot be swapped for
//! another). The data key is stored in the jar's record wrapped (AES-256-GCM) by the node's
//! master key, a random key kept in `<data_dir>/keys/master.key` (mode 0600). Whoever holds
//! that file and the store can read the documents: back it up, and keep it off shared disks.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use uuid::Uuid;

const NONCE_BYTES: usize = 12;
const KEY_BYTES: usize = 32;

/// Failures of blob storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob {0} cannot be decrypted (wrong key or altered)")]
    Decrypt(Uuid),
    #[error("invalid key material: {0}")]
    Key(String),
}

/// A 256-bit AES key.
#[derive(Clone)]
pub struct DataKey([u8; KEY_BYTES]);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<DataKey, BlobError> {
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|err| BlobError::Key(err.to_string()))?;
        Ok(DataKey(key))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    /// `nonce || ciphertext` of `plain`, bound to `context`.
    fn seal(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, BlobError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|err| BlobError::Key(err.to_string()))?;
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| BlobError::Key("encryption failed".into()))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// The plain text of [`DataKey::seal`]'s output; `None` when it does not authenticate.
    fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .ok()
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// The node's master key: wraps the jars' data keys.
#[derive(Clone, Debug)]
pub struct MasterKey(DataKey);

const WRAP_CONTEXT: &[u8] = b"sting jar data key";

impl MasterKey {
    /// Loads `path`, creating it (random, mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, BlobError> {
        if let Ok(bytes) = std::fs::read(path) {
            let key: [u8; KEY_BYTES] = bytes
                .try_into()
                .map_err(|_| BlobError::Key(format!("{} must hold 32 bytes", path.display())))?;
            return Ok(MasterKey(DataKey(key)));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let key = DataKey::generate()?;
        write_private(path, &key.0)?;
        Ok(MasterKey(key))
    }

    /// A new data key and its wrapped form (to store in the jar's record).
    pub fn new_data_key(&self) -> Result<(DataKey, Vec<u8>), BlobError> {
        let key = DataKey::generate()?;
        let wrapped = self.0.seal(&key.0, WRAP_CONTEXT)?;
        Ok((key, wrapped))
    }

    /// Unwraps a jar's data key.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<DataKey, BlobError> {
        let plain = self.0.open(wrapped, WRAP_CONTEXT).ok_or_else(|| {
            BlobError::Key("the jar key does not unwrap with this node's master key".into())
        })?;
        let key: [u8; KEY_BYTES] = plain
            .try_into()
            .map_err(|_| BlobError::Key("unwrapped key has the wrong length".into()))?;
        Ok(DataKey(key))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Document originals under one directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn new(dir: impl Into<PathBuf>) -> BlobStore {
        BlobStore { dir: dir.into() }
    }

    fn path(&self, jar: Uuid, document: Uuid) -> PathBuf {
        self.dir.join(jar.to_string()).join(document.to_string())
    }

    /// Stores a document's original (sealed with `key` when given).
    pub async fn put(
        &self,
        jar: Uuid,
        document: Uuid,
        bytes: &[u8],
        key: Option<&DataKey>,
    ) -> Result<(), BlobError> {
        let data = match key {
            Some(key) => key.seal(bytes, document.as_bytes())?,
            None => bytes.to_vec(),
        };
        let path = self.path(jar, document);
        tokio::task::spawn_blocking(move || {
            let parent = path.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(parent)?;
            let partial = path.with_extension("partial");
            std::fs::write(&partial, &data)?;
            std::fs::File::open(&partial)?.sync_all()?;
            std::fs::rename(&partial, &path)
        })
        .await
        .map_err(|err| std::io::Error::other(err.to_string()))??;
        Ok(())
    }

    /// Reads a document's original (opening it with `key` when given).
    pub async fn get(
        &self,
        jar: Uuid,
        document: Uuid,
        key: Option<&DataKey>,
    ) -> Result<Vec<u8>, BlobError> {
        let data = tokio::fs::read(self.path(jar, document)).await?;
        match key {
            Some(key) => key
                .open(&data, document.as_bytes())
                .ok_or(BlobError::Decrypt(document)),
            None => Ok(data),
        }
    }

    /// Removes a document's original (missing is fine).
    pub async fn delete(&self, jar: Uuid, document: Uuid) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.path(jar, document)).await {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// Removes every original of a jar.
    pub async fn delete_jar(&self, jar: Uuid) -> Result<(), BlobError> {
        match tokio::fs::remove_dir_all(self.dir.join(jar.to_string())).await {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sealed_blobs_round_trip_and_resist_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load_or_create(&dir.path().join("keys/master.key")).unwrap();
        let again = MasterKey::load_or_create(&dir.path().join("keys/master.key")).unwrap();
        let (key, wrapped) = master.new_data_key().unwrap();
        let unwrapped = again.unwrap_key(&wrapped).unwrap();
        assert_eq!(
            unwrapped.0, key.0,
            "the stored master key unwraps the jar key"
        );

        let blobs = BlobStore::new(dir.path().join("blobs"));
        let (jar, doc) = (Uuid::new_v4(), Uuid::new_v4());
        blobs
            .put(jar, doc, b"secret handbook", Some(&key))
            .await
            .unwrap();
        let on_disk = std::fs::read(blobs.path(jar, doc)).unwrap();
        assert!(
            !on_disk.windows(6).any(|w| w == b"secret"),
            "not stored in clear"
        );
        assert_eq!(
            blobs.get(jar, doc, Some(&unwrapped)).await.unwrap(),
            b"secret handbook"
        );

        // Another document's id as context, or a flipped bit, does not open.
        let other = Uuid::new_v4();
        std::fs::create_dir_all(blobs.path(jar, other).parent().unwrap()).unwrap();
        std::fs::write(blobs.path(jar, other), &on_disk).unwrap();
        assert!(matches!(
            blobs.get(jar, other, Some(&key)).await,
            Err(BlobError::Decrypt(_))
        ));
        let mut flipped = on_disk.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(blobs.path(jar, doc), &flipped).unwrap();
        assert!(matches!(
            blobs.get(jar, doc, Some(&key)).await,
            Err(BlobError::Decrypt(_))
        ));

        blobs.delete_jar(jar).await.unwrap();
        assert!(!blobs.path(jar, doc).exists());
        blobs.delete(jar, doc).await.unwrap();
    }

    #[tokio::test]
    async fn plain_blobs_are_stored_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::new(dir.path());
        let (jar, doc) = (Uuid::new_v4(), Uuid::new_v4());
        blobs.put(jar, doc, b"hello", None).await.unwrap();
        assert_eq!(std::fs::read(blobs.path(jar, doc)).unwrap(), b"hello");
        assert_eq!(blobs.get(jar, doc, None).await.unwrap(), b"hello");
    }
}
