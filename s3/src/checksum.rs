//! The `x-amz-checksum-*` algorithms.
//!
//! S3 clients may send a whole-object checksum either as a header or as an
//! `aws-chunked` trailer. The value is always the big-endian digest, base64
//! encoded. [`Checksummer`] computes it incrementally so a body can be checked
//! while it streams through.

use base64::Engine as _;
use sha1::Digest as _;

/// One of the checksum algorithms S3 accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

/// An incremental checksum, created by [`ChecksumAlgorithm::hasher`].
pub struct Checksummer {
    state: State,
}

enum State {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

// === impl ChecksumAlgorithm ===

impl ChecksumAlgorithm {
    /// Every supported algorithm, in a stable order.
    pub const ALL: [Self; 5] = [
        Self::Crc32,
        Self::Crc32c,
        Self::Crc64Nvme,
        Self::Sha1,
        Self::Sha256,
    ];

    /// Maps a header name such as `x-amz-checksum-crc32` (any case) to its algorithm.
    pub fn from_header_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.header_name().eq_ignore_ascii_case(name.trim()))
    }

    /// Maps the algorithm names used by `x-amz-checksum-algorithm` and
    /// `x-amz-sdk-checksum-algorithm` (`CRC32`, `CRC64NVME`, ... any case).
    pub fn from_algorithm_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.algorithm_name().eq_ignore_ascii_case(name.trim()))
    }

    /// The lowercase header (or trailer) name that carries this checksum.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// The uppercase name S3 uses in `x-amz-checksum-algorithm`.
    pub fn algorithm_name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// Length in bytes of the raw digest.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// Length of the padded base64 encoding of the digest.
    pub fn encoded_len(self) -> usize {
        self.digest_len().div_ceil(3) * 4
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Checksummer {
        let state = match self {
            Self::Crc32 => State::Crc32(crc32fast::Hasher::new()),
            Self::Crc32c => State::Crc32c(0),
            Self::Crc64Nvme => State::Crc64Nvme(crc64fast_nvme::Digest::new()),
            Self::Sha1 => State::Sha1(sha1::Sha1::new()),
            Self::Sha256 => State::Sha256(sha2::Sha256::new()),
        };
        Checksummer { state }
    }
}

// === impl Checksummer ===

impl Checksummer {
    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Crc32(h) => h.update(data),
            State::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            State::Crc64Nvme(d) => d.write(data),
            State::Sha1(h) => h.update(data),
            State::Sha256(h) => h.update(data),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        match self.state {
            State::Crc32(_) => ChecksumAlgorithm::Crc32,
            State::Crc32c(_) => ChecksumAlgorithm::Crc32c,
            State::Crc64Nvme(_) => ChecksumAlgorithm::Crc64Nvme,
            State::Sha1(_) => ChecksumAlgorithm::Sha1,
            State::Sha256(_) => ChecksumAlgorithm::Sha256,
        }
    }

    /// The raw big-endian digest.
    pub fn finish(self) -> Vec<u8> {
        match self.state {
            State::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            State::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            State::Crc64Nvme(d) => d.sum64().to_be_bytes().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// The digest in the form S3 puts in `x-amz-checksum-*` (padded base64).
    pub fn finish_base64(self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.finish())
    }
}

impl std::fmt::Debug for Checksummer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checksummer")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(alg: ChecksumAlgorithm, input: &[u8], expected: &str) {
        let mut h = alg.hasher();
        h.update(input);
        assert_eq!(h.finish_base64(), expected, "{alg:?}");
        assert_eq!(expected.len(), alg.encoded_len(), "{alg:?}");
    }

    // Expected values computed with Python's zlib and hashlib, except where a
    // comment names another source.
    #[test]
    fn known_values() {
        // base64.b64encode(zlib.crc32(b'hello world').to_bytes(4, 'big'))
        check(ChecksumAlgorithm::Crc32, b"hello world", "DUoRhQ==");
        // hashlib.sha1(b'hello world'), hashlib.sha256(b'hello world')
        check(
            ChecksumAlgorithm::Sha1,
            b"hello world",
            "Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        );
        check(
            ChecksumAlgorithm::Sha256,
            b"hello world",
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=",
        );
        // Empty input: CRC32 of nothing is 0.
        check(ChecksumAlgorithm::Crc32, b"", "AAAAAA==");
        // Also what botocore's aws-chunked writer put in the trailer for the
        // body "0123456789" * 10 (see chunked.rs tests).
        check(
            ChecksumAlgorithm::Crc32,
            &b"0123456789".repeat(10),
            "sfxLvA==",
        );
        // And this one on "abc".
        check(
            ChecksumAlgorithm::Sha256,
            b"abc",
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
        );
        // The AWS S3 documentation's signed-trailer example sends this CRC32C
        // for its 66560-byte body of 'a'.
        check(ChecksumAlgorithm::Crc32c, &[b'a'; 66_560], "sOO8/Q==");
    }

    #[test]
    fn crc_check_values() {
        // The "123456789" check values of the CRC catalogue (CRC-32/ISO-HDLC,
        // CRC-32/ISCSI) and of the crc64fast-nvme crate (CRC-64/NVME).
        let digest = |alg: ChecksumAlgorithm| {
            let mut h = alg.hasher();
            h.update(b"123456789");
            h.finish()
        };
        assert_eq!(
            digest(ChecksumAlgorithm::Crc32),
            0xcbf4_3926_u32.to_be_bytes()
        );
        assert_eq!(
            digest(ChecksumAlgorithm::Crc32c),
            0xe306_9283_u32.to_be_bytes()
        );
        assert_eq!(
            digest(ChecksumAlgorithm::Crc64Nvme),
            0xae8b_1486_0a79_9888_u64.to_be_bytes()
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        for alg in ChecksumAlgorithm::ALL {
            let mut one = alg.hasher();
            one.update(&data);
            let mut many = alg.hasher();
            for piece in data.chunks(7) {
                many.update(piece);
            }
            assert_eq!(one.finish_base64(), many.finish_base64(), "{alg:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for alg in ChecksumAlgorithm::ALL {
            assert_eq!(
                ChecksumAlgorithm::from_header_name(alg.header_name()),
                Some(alg)
            );
            assert_eq!(
                ChecksumAlgorithm::from_header_name(&alg.header_name().to_uppercase()),
                Some(alg)
            );
            assert_eq!(
                ChecksumAlgorithm::from_algorithm_name(alg.algorithm_name()),
                Some(alg)
            );
            assert_eq!(alg.hasher().algorithm(), alg);
        }
        assert_eq!(
            ChecksumAlgorithm::from_header_name("x-amz-checksum-md5"),
            None
        );
        assert_eq!(ChecksumAlgorithm::from_header_name("content-md5"), None);
    }
}
