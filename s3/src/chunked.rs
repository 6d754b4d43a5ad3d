//! A sans-IO decoder for `aws-chunked` request bodies.
//!
//! The body of a streaming upload is a sequence of chunks:
//!
//! ```text
//! signed:   <hex-size>;chunk-signature=<64 hex>\r\n<data>\r\n ... 0;chunk-signature=<64 hex>\r\n
//! unsigned: <hex-size>\r\n<data>\r\n ... 0\r\n
//! ```
//!
//! followed either by a final `\r\n`, or (in the `-TRAILER` modes) by trailer
//! lines such as `x-amz-checksum-crc32c:sOO8/Q==\r\n`, a
//! `x-amz-trailer-signature:<64 hex>\r\n` line when signed, and a final `\r\n`.
//!
//! Every chunk signature chains from the previous one, starting with the seed
//! signature of the request itself, so chunks can be neither altered, dropped
//! nor reordered. By default signed chunk data is only released once its
//! signature has been checked, so the decoder holds at most one chunk (bounded
//! by [`DecoderConfig::max_chunk_size`]). With
//! [`DecoderConfig::stream_unverified`] it holds nothing: data flows out as it
//! arrives and the caller, not the decoder, withholds the end of the body
//! until [`ChunkedDecoder::finish`] succeeds. Lines are bounded by
//! [`MAX_LINE_LEN`].
//!
//! The caller owns the I/O: it appends whatever bytes arrived to a `BytesMut`,
//! calls [`ChunkedDecoder::decode`], forwards the returned bytes, and calls
//! [`ChunkedDecoder::finish`] at end of input.

use bytes::{Buf as _, Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::checksum::{ChecksumAlgorithm, Checksummer};
use crate::sigv4::{decode_hex32, SigningKey, EMPTY_SHA256_HEX};
use crate::S3ErrorCode;

/// Longest chunk header or trailer line accepted, without its `\r\n`.
pub const MAX_LINE_LEN: usize = 4096;

const CHUNK_SIGNATURE: &[u8] = b"chunk-signature=";
const TRAILER_SIGNATURE: &str = "x-amz-trailer-signature";

/// What is needed to check chunk signatures. `Debug` hides the key and the seed.
#[derive(Clone)]
pub struct ChunkSigning {
    /// The key the request's own signature was verified with.
    pub key: SigningKey,
    /// The request's `x-amz-date`.
    pub amz_date: String,
    /// `date/region/service/aws4_request`.
    pub scope: String,
    /// The signature of the request itself, which the first chunk chains from.
    pub seed_signature: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// `Some` for `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`.
    pub signing: Option<ChunkSigning>,
    /// The checksum announced in `x-amz-trailer`; `Some` for the `-TRAILER` modes.
    pub trailer: Option<ChecksumAlgorithm>,
    /// `x-amz-decoded-content-length`: the decoded body must have exactly this length.
    pub decoded_length: Option<u64>,
    /// Largest chunk accepted; bigger ones are rejected before any of their data is read.
    pub max_chunk_size: usize,
    /// Release signed chunk data as it arrives instead of holding each chunk
    /// until its signature is checked. Memory then stays flat however large
    /// or slow a chunk is, but released bytes are not yet proven: the caller
    /// must hold back the final bytes of the body until `finish` succeeds, so
    /// that a receiver never completes an unverified body.
    pub stream_unverified: bool,
}

/// The decoder. Feed it with [`decode`](Self::decode); it never panics and
/// always makes progress or asks for more input. `Debug` shows only where it is.
pub struct ChunkedDecoder {
    cfg: DecoderConfig,
    state: State,
    /// Signature of the last verified chunk (the seed before the first one).
    previous_signature: [u8; 32],
    /// Data of the signed chunk being read, held back until it is verified.
    pending: BytesMut,
    /// Incremental hash of the chunk being read (signed mode).
    chunk_hash: Sha256,
    /// Signature claimed by the chunk being read (signed mode).
    chunk_signature: [u8; 32],
    /// Decoded bytes so far.
    total: u64,
    /// Checksum of the decoded bytes, when a trailer is expected.
    checksummer: Option<Checksummer>,
    /// The computed checksum, once all data has been seen.
    computed: Option<String>,
    /// `name:value\n` for each trailer line, the text the trailer signature covers.
    trailer_text: String,
    /// The verified trailer value.
    trailer_value: Option<String>,
    /// Set once, returned by every later call.
    failed: Option<ChunkError>,
}

/// Why a chunked body was rejected. Messages never contain signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    InvalidChunkSize,
    #[error("a chunk of {size} bytes exceeds the limit of {limit} bytes")]
    ChunkTooLarge { size: u64, limit: usize },
    #[error("malformed aws-chunked body: {0}")]
    Malformed(&'static str),
    #[error("a chunk header or trailer line is longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    #[error("the chunk signature we calculated does not match the signature you provided")]
    ChunkSignatureMismatch,
    #[error("the trailer signature we calculated does not match the signature you provided")]
    TrailerSignatureMismatch,
    #[error("the trailer signature is missing")]
    MissingTrailerSignature,
    #[error("the body does not end with the trailer announced in x-amz-trailer")]
    MissingTrailer,
    #[error("unexpected trailer, only the one announced in x-amz-trailer is accepted")]
    UnexpectedTrailer,
    #[error("the value of the trailing checksum is not valid")]
    InvalidChecksumValue,
    #[error("the trailing checksum does not match the body")]
    ChecksumMismatch,
    #[error("the decoded body length does not match x-amz-decoded-content-length")]
    DecodedLengthMismatch,
    #[error("the body ended before the final chunk")]
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting `<hex-size>[;chunk-signature=...]\r\n`.
    ChunkHeader,
    /// Reading `remaining` more bytes of chunk data.
    ChunkData { remaining: u64 },
    /// Expecting the `\r\n` that ends chunk data.
    ChunkEnd,
    /// After the final chunk: trailer lines, then an empty line.
    Trailer { skipped_blank: bool },
    /// Everything was verified; only the final `\r\n` may follow.
    End,
    /// The final `\r\n` was read; nothing may follow.
    Done,
}

// === impl ChunkSigning ===

impl std::fmt::Debug for ChunkSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSigning")
            .field("key", &self.key)
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .field("seed_signature", &"<redacted>")
            .finish()
    }
}

// === impl ChunkedDecoder ===

impl std::fmt::Debug for ChunkedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedDecoder")
            .field("cfg", &self.cfg)
            .field("state", &self.state)
            .field("decoded", &self.total)
            .field("held", &self.pending.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ChunkedDecoder {
    pub fn new(cfg: DecoderConfig) -> Self {
        let previous_signature = cfg.signing.as_ref().map_or([0; 32], |s| s.seed_signature);
        let checksummer = cfg.trailer.map(ChecksumAlgorithm::hasher);
        Self {
            cfg,
            state: State::ChunkHeader,
            previous_signature,
            pending: BytesMut::new(),
            chunk_hash: Sha256::new(),
            chunk_signature: [0; 32],
            total: 0,
            checksummer,
            computed: None,
            trailer_text: String::new(),
            trailer_value: None,
            failed: None,
        }
    }

    /// Consumes what it can from `input`, leaving incomplete lines there, and
    /// returns the payload bytes that became available (possibly none).
    ///
    /// Signed chunk data is returned only after its signature was verified.
    /// Errors are final: every later call returns the same error.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Bytes, ChunkError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let mut out = BytesMut::new();
        match self.run(input, &mut out) {
            Ok(()) => Ok(out.freeze()),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// True once the final chunk (and the trailer, and its signature when
    /// signed) were seen and verified and the decoded length matched.
    pub fn is_done(&self) -> bool {
        self.failed.is_none() && matches!(self.state, State::End | State::Done)
    }

    /// To be called at end of input: `Ok` only if the body was complete.
    pub fn finish(&self) -> Result<(), ChunkError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.is_done() {
            Ok(())
        } else {
            Err(ChunkError::Incomplete)
        }
    }

    /// The verified trailing checksum as (header name, base64 value), once done.
    pub fn trailer(&self) -> Option<(&'static str, &str)> {
        if !self.is_done() {
            return None;
        }
        let alg = self.cfg.trailer?;
        Some((alg.header_name(), self.trailer_value.as_deref()?))
    }

    /// Decoded bytes released or held so far.
    pub fn decoded_len(&self) -> u64 {
        self.total
    }

    fn run(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), ChunkError> {
        loop {
            match self.state {
                State::ChunkHeader => {
                    let Some(line) = take_line(input)? else {
                        return Ok(());
                    };
                    self.on_chunk_header(&line)?;
                }
                State::ChunkData { remaining } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let data = input.split_to(n);
                    self.on_data(data, out);
                    let remaining = remaining.saturating_sub(n as u64);
                    self.state = if remaining == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData { remaining }
                    };
                }
                State::ChunkEnd => {
                    match input.first() {
                        None => return Ok(()),
                        Some(b'\r') => {}
                        Some(_) => {
                            return Err(ChunkError::Malformed("chunk data is longer than its size"))
                        }
                    }
                    match input.get(1) {
                        None => return Ok(()),
                        Some(b'\n') => input.advance(2),
                        Some(_) => {
                            return Err(ChunkError::Malformed("chunk data is longer than its size"))
                        }
                    }
                    self.end_data_chunk(out)?;
                    self.state = State::ChunkHeader;
                }
                State::Trailer { skipped_blank } => {
                    let Some(line) = take_line(input)? else {
                        return Ok(());
                    };
                    self.on_trailer_line(&line, skipped_blank)?;
                }
                State::End => {
                    let Some(line) = take_line(input)? else {
                        return Ok(());
                    };
                    if !line.is_empty() {
                        return Err(ChunkError::Malformed("data after the final chunk"));
                    }
                    self.state = State::Done;
                }
                State::Done => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    return Err(ChunkError::Malformed("data after the end of the body"));
                }
            }
        }
    }

    fn on_chunk_header(&mut self, line: &[u8]) -> Result<(), ChunkError> {
        let (size, ext) = match line.iter().position(|&b| b == b';') {
            Some(i) => (line.get(..i).unwrap_or_default(), line.get(i + 1..)),
            None => (line, None),
        };
        let size = parse_hex_size(size).ok_or(ChunkError::InvalidChunkSize)?;

        match (&self.cfg.signing, ext) {
            (Some(_), Some(ext)) => {
                let sig = ext
                    .strip_prefix(CHUNK_SIGNATURE)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(decode_hex32)
                    .ok_or(ChunkError::Malformed(
                        "a signed chunk needs ;chunk-signature=<64 hex digits>",
                    ))?;
                self.chunk_signature = sig;
            }
            (Some(_), None) => {
                return Err(ChunkError::Malformed(
                    "a signed chunk needs ;chunk-signature=<64 hex digits>",
                ))
            }
            (None, Some(_)) => {
                return Err(ChunkError::Malformed(
                    "chunk extensions are not allowed in unsigned chunks",
                ))
            }
            (None, None) => {}
        }

        if size > self.cfg.max_chunk_size as u64 {
            return Err(ChunkError::ChunkTooLarge {
                size,
                limit: self.cfg.max_chunk_size,
            });
        }
        let total = self.total.saturating_add(size);
        if self
            .cfg
            .decoded_length
            .is_some_and(|expected| total > expected)
        {
            return Err(ChunkError::DecodedLengthMismatch);
        }

        self.chunk_hash = Sha256::new();
        if size > 0 {
            self.state = State::ChunkData { remaining: size };
            return Ok(());
        }

        // The final chunk.
        self.verify_chunk(EMPTY_SHA256_HEX)?;
        if self
            .cfg
            .decoded_length
            .is_some_and(|expected| self.total != expected)
        {
            return Err(ChunkError::DecodedLengthMismatch);
        }
        if self.cfg.trailer.is_some() {
            self.computed = self.checksummer.take().map(Checksummer::finish_base64);
            self.state = State::Trailer {
                skipped_blank: false,
            };
        } else {
            self.state = State::End;
        }
        Ok(())
    }

    fn on_data(&mut self, data: BytesMut, out: &mut BytesMut) {
        self.total = self.total.saturating_add(data.len() as u64);
        if let Some(c) = &mut self.checksummer {
            c.update(&data);
        }
        if self.cfg.signing.is_some() {
            self.chunk_hash.update(&data);
            if !self.cfg.stream_unverified {
                self.pending.unsplit(data);
                return;
            }
        }
        out.unsplit(data);
    }

    fn end_data_chunk(&mut self, out: &mut BytesMut) -> Result<(), ChunkError> {
        if self.cfg.signing.is_none() {
            return Ok(());
        }
        let hash =
            crate::sigv4::hex_string(&std::mem::take(&mut self.chunk_hash).finalize().into());
        self.verify_chunk(&hash)?;
        out.unsplit(self.pending.split());
        Ok(())
    }

    /// Checks the claimed signature of the chunk whose data hashes to `hash_hex`.
    fn verify_chunk(&mut self, hash_hex: &str) -> Result<(), ChunkError> {
        let Some(signing) = &self.cfg.signing else {
            return Ok(());
        };
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256_HEX}\n{hash_hex}",
            signing.amz_date,
            signing.scope,
            crate::sigv4::hex_string(&self.previous_signature),
        );
        let expected = signing.key.sign(sts.as_bytes());
        if !bool::from(expected.ct_eq(&self.chunk_signature)) {
            return Err(ChunkError::ChunkSignatureMismatch);
        }
        self.previous_signature = expected;
        Ok(())
    }

    fn on_trailer_line(&mut self, line: &[u8], skipped_blank: bool) -> Result<(), ChunkError> {
        if line.is_empty() {
            // Some writers put an empty line between the final chunk and the
            // trailer (the AWS documentation's own example does); accept one.
            if !skipped_blank && self.trailer_text.is_empty() {
                self.state = State::Trailer {
                    skipped_blank: true,
                };
                return Ok(());
            }
            return self.end_trailer();
        }

        let line = std::str::from_utf8(line)
            .map_err(|_| ChunkError::Malformed("a trailer line is not valid UTF-8"))?;
        let (name, value) = line.split_once(':').ok_or(ChunkError::Malformed(
            "a trailer line must have the form name:value",
        ))?;
        let name = name.trim();
        let value = value.trim_matches([' ', '\t']);

        if name.eq_ignore_ascii_case(TRAILER_SIGNATURE) {
            return self.on_trailer_signature(value);
        }

        let Some(alg) = self.cfg.trailer else {
            return Err(ChunkError::UnexpectedTrailer);
        };
        if !name.eq_ignore_ascii_case(alg.header_name()) || self.trailer_value.is_some() {
            return Err(ChunkError::UnexpectedTrailer);
        }
        if value.len() != alg.encoded_len() {
            return Err(ChunkError::InvalidChecksumValue);
        }
        if self.computed.as_deref() != Some(value) {
            return Err(ChunkError::ChecksumMismatch);
        }
        self.trailer_text.push_str(alg.header_name());
        self.trailer_text.push(':');
        self.trailer_text.push_str(value);
        self.trailer_text.push('\n');
        self.trailer_value = Some(value.to_owned());
        self.state = State::Trailer {
            skipped_blank: true,
        };
        if self.cfg.signing.is_none() {
            // Nothing else may follow but the final empty line.
            self.state = State::End;
        }
        Ok(())
    }

    fn on_trailer_signature(&mut self, value: &str) -> Result<(), ChunkError> {
        let Some(signing) = &self.cfg.signing else {
            return Err(ChunkError::UnexpectedTrailer);
        };
        if self.trailer_value.is_none() {
            return Err(ChunkError::MissingTrailer);
        }
        let claimed = decode_hex32(value).ok_or(ChunkError::Malformed(
            "the trailer signature must be 64 hex digits",
        ))?;
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            signing.amz_date,
            signing.scope,
            hex::encode(self.previous_signature),
            hex::encode(Sha256::digest(self.trailer_text.as_bytes())),
        );
        let expected = signing.key.sign(sts.as_bytes());
        if !bool::from(expected.ct_eq(&claimed)) {
            return Err(ChunkError::TrailerSignatureMismatch);
        }
        self.previous_signature = expected;
        self.state = State::End;
        Ok(())
    }

    /// The empty line that closes the trailer section.
    fn end_trailer(&mut self) -> Result<(), ChunkError> {
        if self.cfg.trailer.is_some() && self.trailer_value.is_none() {
            return Err(ChunkError::MissingTrailer);
        }
        if self.cfg.trailer.is_some() && self.cfg.signing.is_some() {
            return Err(ChunkError::MissingTrailerSignature);
        }
        self.state = State::Done;
        Ok(())
    }
}

// === impl ChunkError ===

impl ChunkError {
    /// The S3 error code a client should see.
    pub fn code(&self) -> S3ErrorCode {
        match self {
            Self::InvalidChunkSize | Self::ChunkTooLarge { .. } => {
                S3ErrorCode::InvalidChunkSizeError
            }
            Self::Malformed(_)
            | Self::LineTooLong
            | Self::Incomplete
            | Self::DecodedLengthMismatch => S3ErrorCode::IncompleteBody,
            Self::ChunkSignatureMismatch
            | Self::TrailerSignatureMismatch
            | Self::MissingTrailerSignature => S3ErrorCode::SignatureDoesNotMatch,
            Self::MissingTrailer | Self::UnexpectedTrailer | Self::InvalidChecksumValue => {
                S3ErrorCode::InvalidRequest
            }
            Self::ChecksumMismatch => S3ErrorCode::BadDigest,
        }
    }
}

// === helpers ===

/// Takes one `\r\n`-terminated line off `input`, without the terminator.
/// `Ok(None)` means the line is not complete yet.
fn take_line(input: &mut BytesMut) -> Result<Option<BytesMut>, ChunkError> {
    let window = input
        .get(..input.len().min(MAX_LINE_LEN + 2))
        .unwrap_or_default();
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = input.split_to(end);
            input.advance(2);
            Ok(Some(line))
        }
        None if window.len() >= MAX_LINE_LEN + 2 => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

/// 1 to 16 hex digits.
fn parse_hex_size(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some((acc << 4) | u64::from(digit))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DOC_DATE: &str = "20130524T000000Z";
    const DOC_SCOPE: &str = "20130524/us-east-1/s3/aws4_request";

    fn hex32(s: &str) -> [u8; 32] {
        decode_hex32(s).unwrap()
    }

    fn doc_signing(seed: &str) -> ChunkSigning {
        ChunkSigning {
            key: SigningKey::derive(DOC_SECRET, "20130524", "us-east-1", "s3"),
            amz_date: DOC_DATE.into(),
            scope: DOC_SCOPE.into(),
            seed_signature: hex32(seed),
        }
    }

    fn config(
        signing: Option<ChunkSigning>,
        trailer: Option<ChecksumAlgorithm>,
        decoded_length: Option<u64>,
    ) -> DecoderConfig {
        DecoderConfig {
            signing,
            trailer,
            decoded_length,
            max_chunk_size: 1 << 20,
            stream_unverified: false,
        }
    }

    /// Feeds `body` in pieces of `step` bytes and returns the payload, or the error.
    fn decode_in_steps(
        cfg: DecoderConfig,
        body: &[u8],
        step: usize,
    ) -> Result<Vec<u8>, ChunkError> {
        let mut decoder = ChunkedDecoder::new(cfg);
        let mut input = BytesMut::new();
        let mut out = Vec::new();
        for piece in body.chunks(step.max(1)) {
            input.extend_from_slice(piece);
            out.extend_from_slice(&decoder.decode(&mut input)?);
        }
        decoder.finish()?;
        Ok(out)
    }

    /// Feeds `body` split at the given points.
    fn decode_split(
        cfg: DecoderConfig,
        body: &[u8],
        splits: &[usize],
    ) -> (ChunkedDecoder, Result<Vec<u8>, ChunkError>) {
        let mut decoder = ChunkedDecoder::new(cfg);
        let mut input = BytesMut::new();
        let mut out = Vec::new();
        let mut start = 0;
        let mut points: Vec<usize> = splits.iter().map(|&s| s.min(body.len())).collect();
        points.sort_unstable();
        points.push(body.len());
        for end in points {
            input.extend_from_slice(body.get(start..end).unwrap_or_default());
            start = end.max(start);
            match decoder.decode(&mut input) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => return (decoder, Err(e)),
            }
        }
        let result = decoder.finish().map(|()| out);
        (decoder, result)
    }

    // --- The AWS S3 documentation's chunked upload example: 66560 bytes of
    // 'a' as a 64 KiB chunk, a 1 KiB chunk and the final chunk. ---

    const DOC_SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    const DOC_SIGS: [&str; 3] = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ];

    fn doc_body(sigs: [&str; 3], tail: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(format!("10000;chunk-signature={}\r\n", sigs[0]).as_bytes());
        body.extend_from_slice(&[b'a'; 65_536]);
        body.extend_from_slice(format!("\r\n400;chunk-signature={}\r\n", sigs[1]).as_bytes());
        body.extend_from_slice(&[b'a'; 1024]);
        body.extend_from_slice(format!("\r\n0;chunk-signature={}\r\n", sigs[2]).as_bytes());
        body.extend_from_slice(tail);
        body
    }

    #[test]
    fn doc_signed_example_decodes() {
        let body = doc_body(DOC_SIGS, b"\r\n");
        assert_eq!(body.len(), 66_824, "the documented Content-Length");
        for step in [1, 7, 100, 4096, 65_536, body.len()] {
            let cfg = config(Some(doc_signing(DOC_SEED)), None, Some(66_560));
            let out = decode_in_steps(cfg, &body, step).unwrap();
            assert_eq!(out, vec![b'a'; 66_560]);
        }
    }

    #[test]
    fn doc_first_chunk_is_released_only_when_verified() {
        let body = doc_body(DOC_SIGS, b"\r\n");
        let mut decoder =
            ChunkedDecoder::new(config(Some(doc_signing(DOC_SEED)), None, Some(66_560)));
        // "10000;chunk-signature=" is 22 bytes, then the signature and CRLF.
        let mut input = BytesMut::from(body.get(..22 + 64 + 2 + 65_536).unwrap());
        assert!(
            decoder.decode(&mut input).unwrap().is_empty(),
            "held until the CRLF"
        );
        input.extend_from_slice(b"\r\n");
        assert_eq!(decoder.decode(&mut input).unwrap().len(), 65_536);
        assert!(!decoder.is_done());
        assert_eq!(decoder.finish(), Err(ChunkError::Incomplete));
    }

    #[test]
    fn streaming_unverified_holds_nothing_and_still_verifies() {
        let body = doc_body(DOC_SIGS, b"\r\n");
        let mut cfg = config(Some(doc_signing(DOC_SEED)), None, Some(66_560));
        cfg.stream_unverified = true;
        let mut decoder = ChunkedDecoder::new(cfg.clone());
        let mut input = BytesMut::from(body.get(..22 + 64 + 2 + 1000).unwrap());
        assert_eq!(
            decoder.decode(&mut input).unwrap().len(),
            1000,
            "released at once"
        );
        assert!(input.is_empty());
        for step in [1, 7, 4096, body.len()] {
            assert_eq!(
                decode_in_steps(cfg.clone(), &body, step).unwrap(),
                vec![b'a'; 66_560]
            );
        }
        // A flipped data byte is still caught, at the end of its chunk.
        let mut bad = body.clone();
        bad[22 + 64 + 2 + 10] ^= 1;
        assert_eq!(
            decode_in_steps(cfg, &bad, 4096),
            Err(ChunkError::ChunkSignatureMismatch)
        );
    }

    #[test]
    fn doc_example_tampering_is_detected() {
        // A wrong seed breaks the first chunk.
        let body = doc_body(DOC_SIGS, b"\r\n");
        let cfg = config(Some(doc_signing(DOC_SIGS[0])), None, None);
        let err = decode_in_steps(cfg, &body, 4096).unwrap_err();
        assert_eq!(err, ChunkError::ChunkSignatureMismatch);
        assert_eq!(err.code(), S3ErrorCode::SignatureDoesNotMatch);

        // Any wrong chunk signature, including the final one.
        for i in 0..3 {
            let mut sigs = DOC_SIGS;
            sigs[i] = "1111111111111111111111111111111111111111111111111111111111111111";
            let cfg = config(Some(doc_signing(DOC_SEED)), None, None);
            let err = decode_in_steps(cfg, &doc_body(sigs, b"\r\n"), 1000).unwrap_err();
            assert_eq!(err, ChunkError::ChunkSignatureMismatch, "chunk {i}");
        }

        // A changed data byte, and swapped chunks.
        let mut body = doc_body(DOC_SIGS, b"\r\n");
        body[90] = b'b';
        let cfg = config(Some(doc_signing(DOC_SEED)), None, None);
        assert_eq!(
            decode_in_steps(cfg, &body, 1000).unwrap_err(),
            ChunkError::ChunkSignatureMismatch
        );
        let sigs = [DOC_SIGS[1], DOC_SIGS[0], DOC_SIGS[2]];
        let cfg = config(Some(doc_signing(DOC_SEED)), None, None);
        assert_eq!(
            decode_in_steps(cfg, &doc_body(sigs, b"\r\n"), 1000).unwrap_err(),
            ChunkError::ChunkSignatureMismatch
        );

        // Errors are final.
        let mut decoder = ChunkedDecoder::new(config(Some(doc_signing(DOC_SIGS[0])), None, None));
        let mut input = BytesMut::from(&body[..]);
        assert!(decoder.decode(&mut input).is_err());
        assert!(decoder.decode(&mut BytesMut::new()).is_err());
        assert!(decoder.finish().is_err());
    }

    #[test]
    fn doc_example_length_and_truncation() {
        let body = doc_body(DOC_SIGS, b"\r\n");
        let cfg = config(Some(doc_signing(DOC_SEED)), None, Some(66_561));
        let err = decode_in_steps(cfg, &body, 4096).unwrap_err();
        assert_eq!(err, ChunkError::DecodedLengthMismatch);
        assert_eq!(err.code(), S3ErrorCode::IncompleteBody);
        let cfg = config(Some(doc_signing(DOC_SEED)), None, Some(1000));
        assert_eq!(
            decode_in_steps(cfg, &body, 4096).unwrap_err(),
            ChunkError::DecodedLengthMismatch
        );

        // Every truncation before the final chunk's header line fails at finish.
        let final_line = body.len() - 2;
        for cut in [0, 1, 50, 88, 65_000, 65_626, final_line - 1] {
            let cfg = config(Some(doc_signing(DOC_SEED)), None, Some(66_560));
            let err = decode_in_steps(cfg, &body[..cut], 977).unwrap_err();
            assert_eq!(err, ChunkError::Incomplete, "cut at {cut}");
            assert_eq!(err.code(), S3ErrorCode::IncompleteBody);
        }
        // The final CRLF alone may be missing: everything signed was verified.
        let cfg = config(Some(doc_signing(DOC_SEED)), None, Some(66_560));
        assert!(decode_in_steps(cfg, &body[..final_line], 977).is_ok());
        // But nothing may follow it.
        let mut longer = body.clone();
        longer.extend_from_slice(b"x");
        let cfg = config(Some(doc_signing(DOC_SEED)), None, Some(66_560));
        assert!(decode_in_steps(cfg, &longer, 977).is_err());
    }

    #[test]
    fn chunk_size_limit() {
        let body = doc_body(DOC_SIGS, b"\r\n");
        let mut cfg = config(Some(doc_signing(DOC_SEED)), None, None);
        cfg.max_chunk_size = 65_535;
        let err = decode_in_steps(cfg, &body, 100).unwrap_err();
        assert_eq!(
            err,
            ChunkError::ChunkTooLarge {
                size: 65_536,
                limit: 65_535
            }
        );
        assert_eq!(err.code(), S3ErrorCode::InvalidChunkSizeError);
    }

    // --- The AWS S3 documentation's signed-trailer example: the same body
    // with a CRC32C trailer. ---

    const TRAILER_SEED: &str = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";
    const TRAILER_SIGS: [&str; 3] = [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ];
    const TRAILER: &[u8] = b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n";

    fn trailer_cfg() -> DecoderConfig {
        config(
            Some(doc_signing(TRAILER_SEED)),
            Some(ChecksumAlgorithm::Crc32c),
            Some(66_560),
        )
    }

    #[test]
    fn doc_signed_trailer_example_decodes() {
        let body = doc_body(TRAILER_SIGS, TRAILER);
        for step in [1, 13, 4096, body.len()] {
            let (decoder, out) = decode_split(
                trailer_cfg(),
                &body,
                &(step..body.len()).step_by(step).collect::<Vec<_>>(),
            );
            assert_eq!(out.unwrap(), vec![b'a'; 66_560]);
            assert_eq!(
                decoder.trailer(),
                Some(("x-amz-checksum-crc32c", "sOO8/Q=="))
            );
        }
        // The documentation's own rendering has an empty line before the trailer.
        let mut tail = b"\r\n".to_vec();
        tail.extend_from_slice(TRAILER);
        let body = doc_body(TRAILER_SIGS, &tail);
        assert!(decode_in_steps(trailer_cfg(), &body, 4096).is_ok());
        // And the final empty line may be missing at end of input.
        let body = doc_body(TRAILER_SIGS, &TRAILER[..TRAILER.len() - 2]);
        assert!(decode_in_steps(trailer_cfg(), &body, 4096).is_ok());
    }

    #[test]
    fn doc_signed_trailer_tampering_is_detected() {
        let bad_sig = String::from_utf8(TRAILER.to_vec())
            .unwrap()
            .replace("d81f82fc", "d81f82fd");
        let body = doc_body(TRAILER_SIGS, bad_sig.as_bytes());
        let err = decode_in_steps(trailer_cfg(), &body, 4096).unwrap_err();
        assert_eq!(err, ChunkError::TrailerSignatureMismatch);
        assert_eq!(err.code(), S3ErrorCode::SignatureDoesNotMatch);

        // A different (well-formed) checksum fails on the checksum itself.
        let bad_sum = String::from_utf8(TRAILER.to_vec())
            .unwrap()
            .replace("sOO8/Q==", "sOO8/A==");
        let body = doc_body(TRAILER_SIGS, bad_sum.as_bytes());
        let err = decode_in_steps(trailer_cfg(), &body, 4096).unwrap_err();
        assert_eq!(err, ChunkError::ChecksumMismatch);
        assert_eq!(err.code(), S3ErrorCode::BadDigest);

        // Without the trailer signature.
        let body = doc_body(TRAILER_SIGS, b"x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n");
        assert_eq!(
            decode_in_steps(trailer_cfg(), &body, 4096).unwrap_err(),
            ChunkError::MissingTrailerSignature
        );
        let body = doc_body(TRAILER_SIGS, b"x-amz-checksum-crc32c:sOO8/Q==\r\n");
        assert_eq!(
            decode_in_steps(trailer_cfg(), &body, 4096).unwrap_err(),
            ChunkError::Incomplete
        );

        // A trailer other than the announced one.
        let mut cfg = trailer_cfg();
        cfg.trailer = Some(ChecksumAlgorithm::Crc32);
        assert_eq!(
            decode_in_steps(cfg, &doc_body(TRAILER_SIGS, TRAILER), 4096).unwrap_err(),
            ChunkError::UnexpectedTrailer
        );

        // No trailer at all.
        let body = doc_body(TRAILER_SIGS, b"\r\n\r\n");
        assert_eq!(
            decode_in_steps(trailer_cfg(), &body, 4096).unwrap_err(),
            ChunkError::MissingTrailer
        );
    }

    // --- botocore 1.43's AwsChunkedWrapper (STREAMING-UNSIGNED-PAYLOAD-TRAILER)
    // produced these bodies on this machine. ---

    #[test]
    fn botocore_unsigned_trailer_bodies() {
        let body = b"40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n24\r\n456789012345678901234567890123456789\r\n0\r\nx-amz-checksum-crc32:sfxLvA==\r\n\r\n";
        for step in 1..=body.len() {
            let cfg = config(None, Some(ChecksumAlgorithm::Crc32), Some(100));
            assert_eq!(
                decode_in_steps(cfg, body, step).unwrap(),
                b"0123456789".repeat(10)
            );
        }
        let cfg = config(None, Some(ChecksumAlgorithm::Crc32), None);
        let (decoder, out) = decode_split(cfg, body, &[]);
        assert_eq!(out.unwrap().len(), 100);
        assert_eq!(
            decoder.trailer(),
            Some(("x-amz-checksum-crc32", "sfxLvA=="))
        );

        let body = b"3\r\nabc\r\n0\r\nx-amz-checksum-sha256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=\r\n\r\n";
        let cfg = config(None, Some(ChecksumAlgorithm::Sha256), Some(3));
        assert_eq!(decode_in_steps(cfg, body, 5).unwrap(), b"abc");

        // The same body with a different payload fails the checksum.
        let tampered = String::from_utf8(body.to_vec())
            .unwrap()
            .replace("abc", "abd");
        let cfg = config(None, Some(ChecksumAlgorithm::Sha256), Some(3));
        assert_eq!(
            decode_in_steps(cfg, tampered.as_bytes(), 5).unwrap_err(),
            ChunkError::ChecksumMismatch
        );
        // A signature line has no place in an unsigned body.
        let cfg = config(None, Some(ChecksumAlgorithm::Sha256), Some(3));
        let signed = b"3\r\nabc\r\n0\r\nx-amz-trailer-signature:00\r\n\r\n";
        assert_eq!(
            decode_in_steps(cfg, signed, 5).unwrap_err(),
            ChunkError::UnexpectedTrailer
        );
    }

    #[test]
    fn unsigned_data_streams_as_it_arrives() {
        let mut decoder = ChunkedDecoder::new(config(None, None, None));
        let mut input = BytesMut::from(&b"a\r\n01234"[..]);
        assert_eq!(&decoder.decode(&mut input).unwrap()[..], b"01234");
        assert!(input.is_empty());
        input.extend_from_slice(b"56789\r\n0\r");
        assert_eq!(&decoder.decode(&mut input).unwrap()[..], b"56789");
        assert_eq!(&input[..], b"0\r", "a partial line stays in the buffer");
        input.extend_from_slice(b"\n\r\n");
        assert!(decoder.decode(&mut input).unwrap().is_empty());
        assert!(decoder.is_done());
        assert_eq!(decoder.trailer(), None);
        assert_eq!(decoder.decoded_len(), 10);
    }

    #[test]
    fn framing_errors() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"zz\r\n", ChunkError::InvalidChunkSize),
            (b"\r\n", ChunkError::InvalidChunkSize),
            (b" 1\r\n", ChunkError::InvalidChunkSize),
            (b"11111111111111111\r\n", ChunkError::InvalidChunkSize),
            (
                b"ffffffffffffffff\r\n",
                ChunkError::ChunkTooLarge {
                    size: u64::MAX,
                    limit: 1 << 20,
                },
            ),
            (
                b"1;ext=1\r\n",
                ChunkError::Malformed("chunk extensions are not allowed in unsigned chunks"),
            ),
            (
                b"1\r\nab\r\n",
                ChunkError::Malformed("chunk data is longer than its size"),
            ),
            (
                b"1\r\na\rx",
                ChunkError::Malformed("chunk data is longer than its size"),
            ),
            (
                b"0\r\nx\r\n",
                ChunkError::Malformed("data after the final chunk"),
            ),
            (
                b"0\r\n\r\n\r\n",
                ChunkError::Malformed("data after the end of the body"),
            ),
        ];
        for (body, expected) in cases {
            let err = decode_in_steps(config(None, None, None), body, 1).unwrap_err();
            assert_eq!(&err, expected, "{:?}", String::from_utf8_lossy(body));
        }
        let long = vec![b'1'; MAX_LINE_LEN + 10];
        let err = decode_in_steps(config(None, None, None), &long, 100).unwrap_err();
        assert_eq!(err, ChunkError::LineTooLong);
        // Signed mode needs the signature extension.
        let err = decode_in_steps(
            config(Some(doc_signing(DOC_SEED)), None, None),
            b"1\r\na\r\n",
            1,
        )
        .unwrap_err();
        assert_eq!(err.code(), S3ErrorCode::IncompleteBody);
        // A trailer that is not valid base64 of the right length.
        let err = decode_in_steps(
            config(None, Some(ChecksumAlgorithm::Crc32), None),
            b"0\r\nx-amz-checksum-crc32:abc\r\n\r\n",
            1,
        )
        .unwrap_err();
        assert_eq!(err, ChunkError::InvalidChecksumValue);
    }

    /// Signs chunks with `key` the way a client does, for the properties below.
    fn sign_body(
        signing: &ChunkSigning,
        chunks: &[&[u8]],
        trailer: Option<(ChecksumAlgorithm, String)>,
    ) -> Vec<u8> {
        let mut prev = signing.seed_signature;
        let mut body = Vec::new();
        let mut all: Vec<&[u8]> = chunks.to_vec();
        all.push(b"");
        for data in all {
            let sts = format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256_HEX}\n{}",
                signing.amz_date,
                signing.scope,
                hex::encode(prev),
                hex::encode(Sha256::digest(data))
            );
            prev = signing.key.sign(sts.as_bytes());
            body.extend_from_slice(
                format!("{:x};chunk-signature={}\r\n", data.len(), hex::encode(prev)).as_bytes(),
            );
            if !data.is_empty() {
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
            }
        }
        if let Some((alg, value)) = trailer {
            let text = format!("{}:{value}\n", alg.header_name());
            let sts = format!(
                "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
                signing.amz_date,
                signing.scope,
                hex::encode(prev),
                hex::encode(Sha256::digest(text.as_bytes()))
            );
            let sig = signing.key.sign(sts.as_bytes());
            body.extend_from_slice(
                format!(
                    "{}:{value}\r\nx-amz-trailer-signature:{}\r\n",
                    alg.header_name(),
                    hex::encode(sig)
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    #[test]
    fn every_split_point_decodes_identically() {
        let signing = doc_signing(DOC_SEED);
        let data: &[&[u8]] = &[b"hello ", b"chunked ", b"world"];
        let mut sum = ChecksumAlgorithm::Sha1.hasher();
        data.iter().for_each(|d| sum.update(d));
        let body = sign_body(
            &signing,
            data,
            Some((ChecksumAlgorithm::Sha1, sum.finish_base64())),
        );
        let cfg = || {
            config(
                Some(signing.clone()),
                Some(ChecksumAlgorithm::Sha1),
                Some(19),
            )
        };
        for a in 0..=body.len() {
            let (_, out) = decode_split(cfg(), &body, &[a]);
            assert_eq!(out.unwrap(), b"hello chunked world", "split at {a}");
            for b in (a..=body.len()).step_by(3) {
                let (decoder, out) = decode_split(cfg(), &body, &[a, b]);
                assert_eq!(out.unwrap(), b"hello chunked world", "split at {a}, {b}");
                assert!(decoder.trailer().is_some());
            }
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let decoder = ChunkedDecoder::new(config(Some(doc_signing(DOC_SEED)), None, None));
        let debug = format!("{decoder:?}");
        assert!(debug.contains("SigningKey(<redacted>)"), "{debug}");
        assert!(
            !debug.contains("4f232c43") && !debug.contains("79, 35, 44"),
            "{debug}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_input_never_panics(
            body in prop::collection::vec(prop::sample::select(vec![
                b'0', b'1', b'a', b'f', b'\r', b'\n', b';', b':', b'=', b'x', b'-', 0xff,
            ]), 0..300),
            raw in prop::collection::vec(any::<u8>(), 0..100),
            splits in prop::collection::vec(0usize..400, 0..6),
            signed in any::<bool>(),
            trailer in any::<bool>(),
        ) {
            for body in [&body, &raw] {
                let mut cfg = config(signed.then(|| doc_signing(DOC_SEED)), trailer.then_some(ChecksumAlgorithm::Crc32), None);
                cfg.max_chunk_size = 64;
                let (decoder, _) = decode_split(cfg, body, &splits);
                let _ = decoder.finish();
                let _ = decoder.trailer();
            }
        }

        #[test]
        fn signed_bodies_round_trip(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 0..5),
            splits in prop::collection::vec(0usize..1200, 0..5),
            flip in any::<prop::sample::Index>(),
        ) {
            let signing = doc_signing(DOC_SEED);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let mut sum = ChecksumAlgorithm::Crc64Nvme.hasher();
            refs.iter().for_each(|d| sum.update(d));
            let body = sign_body(&signing, &refs, Some((ChecksumAlgorithm::Crc64Nvme, sum.finish_base64())));
            let expected: Vec<u8> = chunks.concat();
            let cfg = || config(Some(signing.clone()), Some(ChecksumAlgorithm::Crc64Nvme), Some(expected.len() as u64));
            let (decoder, out) = decode_split(cfg(), &body, &splits);
            prop_assert_eq!(out.unwrap(), expected.clone());
            prop_assert!(decoder.trailer().is_some());

            // Flipping any byte before the final CRLF breaks the body.
            let i = flip.index(body.len() - 2);
            let mut bad = body.clone();
            bad[i] ^= 0x01;
            let (_, out) = decode_split(cfg(), &bad, &splits);
            prop_assert!(out.is_err(), "flipped byte {} of {:?}", i, String::from_utf8_lossy(&body));
        }
    }
}
