//! The S3 protocol, without I/O.
//!
//! Everything the gateway needs to understand an S3 request lives here as pure
//! functions and state machines over `http` types and byte buffers:
//!
//! - [`sigv4`]: parse and verify AWS Signature Version 4 (header and presigned),
//!   derive signing keys. Signatures are compared in constant time.
//! - [`sigv2`]: legacy Signature Version 2 (header and presigned): parse it and
//!   rebuild the string to sign; the signature is checked where the secret is.
//! - [`chunked`]: a sans-IO decoder for `aws-chunked` bodies that verifies every
//!   chunk signature and the trailing checksum.
//! - [`checksum`]: the `x-amz-checksum-*` algorithms.
//! - [`request`]: classify a request into an S3 operation, the IAM-style action it
//!   needs and the bucket/key it touches (path- and virtual-host-style).
//! - [`error`]: S3 error codes and the error XML document.
//! - [`sts`]: STS `AssumeRoleWithWebIdentity` at the S3 endpoint: which
//!   requests are STS calls, their parameters, and STS's XML documents.
//!
//! This crate deliberately knows nothing about sockets, tokio, the control plane
//! or configuration: it must stay cheap to fuzz and property-test.

pub mod checksum;
pub mod chunked;
pub mod chunked_encoder;
pub mod delete;
pub mod error;
pub mod names;
pub mod request;
mod scan;
pub mod sigv2;
pub mod sigv4;
pub mod sts;
pub mod xml;

pub use error::{S3Error, S3ErrorCode};
