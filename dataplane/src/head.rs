//! What the lean HTTP/1.1 client (`client.rs`) and server (`server.rs`)
//! share of reading a message head: its limits, where httparse found each
//! field in the read buffer, and the `Content-Length` syntax.

/// Most header fields a head may have (hyper's limit too).
pub(crate) const MAX_HEADERS: usize = 100;
/// The least room a read gets.
pub(crate) const READ_MIN: usize = 8 << 10;
/// Header fields whose place in the buffer one parse records; a head with
/// more is parsed a second time from the frozen buffer.
pub(crate) const SPANS: usize = 32;

/// Per field, the byte ranges of its name and value in the buffer:
/// `[name start, name end, value start, value end]`.
pub(crate) type Spans = [[u32; 4]; SPANS];

/// Where `part`, a slice of `buf` that httparse handed out, starts in it.
pub(crate) fn offset(buf: &[u8], part: &[u8]) -> u32 {
    u32::try_from(part.as_ptr() as usize - buf.as_ptr() as usize).unwrap_or(u32::MAX)
}

/// The spans of the first [`SPANS`] of `fields`, parsed from `buf`. The
/// parse borrows the buffer; with these its values are cut from it after,
/// without a copy.
pub(crate) fn spans(buf: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
    let mut spans = [[0u32; 4]; SPANS];
    for (span, field) in spans.iter_mut().zip(fields) {
        let (name, value) = (offset(buf, field.name.as_bytes()), offset(buf, field.value));
        *span = [
            name,
            name.saturating_add(field.name.len() as u32),
            value,
            value.saturating_add(field.value.len() as u32),
        ];
    }
    spans
}

/// A `Content-Length` value: digits only, as RFC 9110 has it (a list of
/// equal values is refused too: no peer of the gateway needs one).
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}
