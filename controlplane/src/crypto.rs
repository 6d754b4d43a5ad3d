//! Encryption at rest for secrets the control plane stores (in Redis).
//!
//! One [`MasterKey`] (32 random bytes, given as base64 in a file or an
//! environment variable) seals every secret with AES-256-GCM. Each sealed
//! value is `base64(nonce || ciphertext || tag)` with a fresh random 96-bit
//! nonce. A *context* string naming the record the secret belongs to (for
//! example `key:AKIA…`) is bound in as associated data, so a ciphertext
//! copied into another record does not open.
//!
//! Nothing here logs, and neither errors nor `Debug` ever show key material
//! or plaintext.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Secret;

/// Length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// No key was given: neither a file nor the environment variable.
    #[error("no master key: set {env_var} or pass a master key file")]
    Missing { env_var: String },
    #[error("cannot read master key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key text is not base64 of exactly 32 bytes. Never says more.
    #[error("invalid master key: expected base64 of {MASTER_KEY_LEN} bytes")]
    InvalidKey,
    /// A sealed value is not base64 or too short to hold nonce and tag.
    #[error("sealed value is malformed")]
    Malformed,
    /// Authentication failed: wrong key, wrong context or tampered data.
    #[error("sealed value does not open (wrong master key or tampered data)")]
    Open,
    /// The system random source or the cipher failed while sealing.
    #[error("sealing failed")]
    Seal,
}

/// The key that encrypts stored secrets. `Debug` is redacted.
#[derive(Clone)]
pub struct MasterKey {
    key: LessSafeKey,
}

// === impl MasterKey ===

impl MasterKey {
    /// The key from its base64 text (standard alphabet, padded; surrounding
    /// whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| CryptoError::InvalidKey)?;
        Self::from_bytes(&bytes)
    }

    /// The key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != MASTER_KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// The key from a file holding its base64 text.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let text = std::fs::read_to_string(path).map_err(|source| CryptoError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_base64(&text)
    }

    /// The key from `file` if given, else from the environment variable
    /// `env_var` (e.g. `S3GATE_MASTER_KEY`), both holding base64 text.
    pub fn from_file_or_env(file: Option<&Path>, env_var: &str) -> Result<Self, CryptoError> {
        match file {
            Some(path) => Self::from_file(path),
            None => match std::env::var(env_var) {
                Ok(text) if !text.trim().is_empty() => Self::from_base64(&text),
                _ => Err(CryptoError::Missing {
                    env_var: env_var.to_owned(),
                }),
            },
        }
    }

    /// A fresh random key, as base64 text (for `--master-key-file` setup and
    /// tests).
    pub fn generate_base64() -> Result<String, CryptoError> {
        let mut bytes = [0u8; MASTER_KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CryptoError::Seal)?;
        Ok(BASE64.encode(bytes))
    }

    /// Encrypts `plaintext`, bound to `context`. Two calls never give the
    /// same output.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut in_out = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Seal)?;
        out.extend_from_slice(&in_out);
        Ok(BASE64.encode(out))
    }

    /// Decrypts what [`MasterKey::seal`] gave for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret, CryptoError> {
        let bytes = BASE64.decode(sealed).map_err(|_| CryptoError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut in_out = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| CryptoError::Open)?;
        let text = std::str::from_utf8(plain).map_err(|_| CryptoError::Open)?;
        Ok(Secret::new(text))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key();
        let sealed = k.seal("wJalrXUtnFEMI/K7MDENG", "key:AKID").unwrap();
        assert!(!sealed.contains("wJalrXUtnFEMI"));
        assert_eq!(
            k.open(&sealed, "key:AKID").unwrap().expose(),
            "wJalrXUtnFEMI/K7MDENG"
        );
        // The empty string is a valid plaintext too.
        let sealed = k.seal("", "c").unwrap();
        assert_eq!(k.open(&sealed, "c").unwrap().expose(), "");
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = key().seal("s3cr3t", "key:AKID").unwrap();
        assert!(matches!(
            key().open(&sealed, "key:AKID"),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn wrong_context_fails() {
        let k = key();
        let sealed = k.seal("s3cr3t", "key:AKID").unwrap();
        assert!(matches!(
            k.open(&sealed, "key:OTHER"),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            k.open(&sealed, "backend:AKID"),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let k = key();
        let sealed = k.seal("s3cr3t", "ctx").unwrap();
        let mut bytes = BASE64.decode(&sealed).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            let tampered = BASE64.encode(&bytes);
            assert!(
                matches!(k.open(&tampered, "ctx"), Err(CryptoError::Open)),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        let truncated = BASE64.encode(&bytes[..bytes.len() - 1]);
        assert!(k.open(&truncated, "ctx").is_err());
        assert!(matches!(k.open("AAAA", "ctx"), Err(CryptoError::Malformed)));
        assert!(matches!(
            k.open("not base64!", "ctx"),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn two_seals_differ() {
        let k = key();
        let a = k.seal("same", "ctx").unwrap();
        let b = k.seal("same", "ctx").unwrap();
        assert_ne!(a, b);
        assert_eq!(k.open(&a, "ctx").unwrap(), k.open(&b, "ctx").unwrap());
    }

    #[test]
    fn invalid_keys_are_rejected_without_echo() {
        for bad in [
            "",
            "short",
            "!!!!",
            &BASE64.encode([0u8; 31]),
            &BASE64.encode([0u8; 33]),
        ] {
            let err = MasterKey::from_base64(bad).unwrap_err();
            assert!(matches!(err, CryptoError::InvalidKey));
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad));
            }
        }
        // Whitespace around the key, as in a file with a trailing newline.
        let text = MasterKey::generate_base64().unwrap();
        MasterKey::from_base64(&format!("  {text}\n")).unwrap();
    }

    #[test]
    fn loads_from_file_or_env() {
        let text = MasterKey::generate_base64().unwrap();
        let dir = std::env::temp_dir().join(format!("s3gate-mk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("master.key");
        std::fs::write(&file, format!("{text}\n")).unwrap();
        let from_file = MasterKey::from_file_or_env(Some(&file), "S3GATE_TEST_UNSET_VAR").unwrap();
        let sealed = from_file.seal("x", "c").unwrap();
        assert_eq!(
            MasterKey::from_base64(&text)
                .unwrap()
                .open(&sealed, "c")
                .unwrap()
                .expose(),
            "x"
        );
        assert!(matches!(
            MasterKey::from_file_or_env(Some(&dir.join("missing")), "X"),
            Err(CryptoError::Read { .. })
        ));
        assert!(matches!(
            MasterKey::from_file_or_env(None, "S3GATE_TEST_UNSET_VAR_9f2c"),
            Err(CryptoError::Missing { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_is_redacted() {
        let text = MasterKey::generate_base64().unwrap();
        let k = MasterKey::from_base64(&text).unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&text));
        assert!(dbg.contains("redacted"));
    }
}
