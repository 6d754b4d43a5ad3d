//! Re-framing a verified payload as an unsigned aws-chunked body that ends
//! with a trailing checksum (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
//!
//! The gateway cannot forward a client's chunk signatures (they were made
//! with the client's key), but it can pass the client's checksum on. Chunks
//! have a fixed size so the encoded length — which the backend needs as
//! Content-Length — follows from the decoded length alone.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::checksum::ChecksumAlgorithm;

/// Size of every chunk but the last.
pub const CHUNK_SIZE: usize = 64 * 1024;

const CRLF: Bytes = Bytes::from_static(b"\r\n");

pub struct TrailerEncoder {
    algorithm: ChecksumAlgorithm,
    chunk_size: usize,
    pending: BytesMut,
}

impl TrailerEncoder {
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        Self::with_chunk_size(algorithm, CHUNK_SIZE)
    }

    pub fn with_chunk_size(algorithm: ChecksumAlgorithm, chunk_size: usize) -> Self {
        Self {
            algorithm,
            chunk_size: chunk_size.max(1),
            pending: BytesMut::new(),
        }
    }

    /// The exact encoded length of a payload of `decoded_len` bytes.
    pub fn encoded_len(&self, decoded_len: u64) -> u64 {
        let cs = self.chunk_size as u64;
        let full = decoded_len / cs;
        let rest = decoded_len % cs;
        let framed = |n: u64| hex_len(n) + 2 + n + 2;
        let mut total = full * framed(cs);
        if rest > 0 {
            total += framed(rest);
        }
        // "0\r\n", "name:value\r\n", "\r\n"
        total
            + 3
            + (self.algorithm.header_name().len() + 1 + self.algorithm.encoded_len() + 2) as u64
            + 2
    }

    /// Appends payload bytes, queueing every complete chunk on `out`.
    pub fn push(&mut self, data: &[u8], out: &mut VecDeque<Bytes>) {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= self.chunk_size {
            let chunk = self.pending.split_to(self.chunk_size).freeze();
            frame(chunk, out);
        }
    }

    /// Queues the last partial chunk, the final chunk and the trailer.
    /// `checksum` is the base64 value, already verified by the decoder.
    pub fn finish(&mut self, checksum: &str, out: &mut VecDeque<Bytes>) {
        if !self.pending.is_empty() {
            let chunk = self.pending.split().freeze();
            frame(chunk, out);
        }
        let mut end = String::with_capacity(64);
        end.push_str("0\r\n");
        end.push_str(self.algorithm.header_name());
        end.push(':');
        end.push_str(checksum);
        end.push_str("\r\n\r\n");
        out.push_back(Bytes::from(end));
    }
}

fn frame(chunk: Bytes, out: &mut VecDeque<Bytes>) {
    out.push_back(Bytes::from(format!("{:x}\r\n", chunk.len())));
    out.push_back(chunk);
    out.push_back(CRLF);
}

fn hex_len(mut n: u64) -> u64 {
    let mut digits = 1;
    while n >= 16 {
        n /= 16;
        digits += 1;
    }
    digits
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::chunked::{ChunkedDecoder, DecoderConfig};

    fn roundtrip(len: usize, chunk_size: usize) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let alg = ChecksumAlgorithm::Crc32;
        let mut sum = alg.hasher();
        sum.update(&payload);
        let checksum = sum.finish_base64();
        let mut enc = TrailerEncoder::with_chunk_size(alg, chunk_size);
        let mut out = VecDeque::new();
        // feed in uneven pieces
        for piece in payload.chunks(37) {
            enc.push(piece, &mut out);
        }
        enc.finish(&checksum, &mut out);
        let wire: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(
            wire.len() as u64,
            enc.encoded_len(len as u64),
            "len {len} chunk {chunk_size}"
        );

        let mut dec = ChunkedDecoder::new(DecoderConfig {
            signing: None,
            trailer: Some(alg),
            decoded_length: Some(len as u64),
            max_chunk_size: 1 << 20,
            stream_unverified: false,
        });
        let mut input = BytesMut::from(&wire[..]);
        let decoded = dec.decode(&mut input).unwrap();
        dec.finish().unwrap();
        assert_eq!(&decoded[..], &payload[..]);
        assert_eq!(
            dec.trailer().map(|(n, v)| (n, v.to_owned())),
            Some(("x-amz-checksum-crc32", checksum))
        );
    }

    #[test]
    fn encodes_what_the_decoder_accepts() {
        for len in [0, 1, 15, 16, 17, 255, 256, 1000, 4096, 10_000] {
            for cs in [1, 16, 100, 4096] {
                roundtrip(len, cs);
            }
        }
        roundtrip(200_000, CHUNK_SIZE);
    }
}
