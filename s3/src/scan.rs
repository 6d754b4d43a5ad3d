//! Byte scans for the short strings of a request's authentication (the
//! `Authorization` header's components, a credential scope, the signed
//! header list, header values). `str::split(char)` finds each separator
//! with `memchr`, whose set-up costs more than a scan of strings this
//! short; here a separator is found eight bytes at a time, and it is an
//! ASCII byte, so every split point is a char boundary.

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Non-zero when some byte of `v` is zero. Of the bits set, the lowest
/// marks the first zero byte of a little-endian word exactly (a borrow can
/// only mark bytes above a real zero).
fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGHS
}

/// Where `sep` first occurs in `bytes`.
pub(crate) fn position(bytes: &[u8], sep: u8) -> Option<usize> {
    let pattern = ONES * u64::from(sep);
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let found = zero_bytes(u64::from_le_bytes(w) ^ pattern);
        if found != 0 {
            // At most 63 / 8 = 7.
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == sep)
        .map(|i| at + i)
}

/// `s` split at every `sep`, as `str::split(sep)` splits it.
pub(crate) fn split(s: &str, sep: u8) -> Split<'_> {
    debug_assert!(sep.is_ascii());
    Split { rest: Some(s), sep }
}

/// `s` split at its first `sep`, as `str::split_once(sep)` splits it.
pub(crate) fn split_once(s: &str, sep: u8) -> Option<(&str, &str)> {
    debug_assert!(sep.is_ascii());
    let i = position(s.as_bytes(), sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

pub(crate) struct Split<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match position(rest.as_bytes(), self.sep) {
            Some(i) => {
                self.rest = rest.get(i + 1..);
                rest.get(..i)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Whether `bytes` holds a space or a tab: eight bytes at a time.
pub(crate) fn has_blank(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let v = u64::from_ne_bytes(w);
        if zero_bytes(v ^ (ONES * u64::from(b' '))) | zero_bytes(v ^ (ONES * u64::from(b'\t'))) != 0
        {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b == b' ' || b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn splits_as_str_does(s in "[a-c,=/;é \t]{0,40}", sep in prop::sample::select(vec![b',', b'=', b'/', b';'])) {
            let want: Vec<&str> = s.split(char::from(sep)).collect();
            let got: Vec<&str> = split(&s, sep).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(split_once(&s, sep), s.split_once(char::from(sep)));
        }

        #[test]
        fn finds_a_byte_where_a_byte_scan_does(s in prop::collection::vec(any::<u8>(), 0..70), sep in any::<u8>()) {
            prop_assert_eq!(position(&s, sep), s.iter().position(|&b| b == sep));
        }

        #[test]
        fn finds_blanks_as_a_byte_scan_does(s in prop::collection::vec(any::<u8>(), 0..70)) {
            let want = s.iter().any(|&b| b == b' ' || b == b'\t');
            prop_assert_eq!(has_blank(&s), want);
        }
    }

    #[test]
    fn a_separator_in_every_position_is_found_first() {
        for len in 0..20 {
            assert_eq!(position(&vec![b'a'; len], b';'), None);
            for at in 0..len {
                // Later copies, and the bytes next to it (a borrow's
                // neighbours), do not move the first.
                let mut s: Vec<u8> = [b':', b'<', 0x00, 0xff, b'a']
                    .iter()
                    .copied()
                    .cycle()
                    .take(len)
                    .collect();
                s[at] = b';';
                for later in at + 1..len {
                    let mut t = s.clone();
                    t[later] = b';';
                    assert_eq!(position(&t, b';'), Some(at), "{t:?}");
                }
                assert_eq!(position(&s, b';'), Some(at), "{s:?}");
            }
        }
    }

    #[test]
    fn blanks_in_every_position_are_found() {
        for len in 0..20 {
            for at in 0..len {
                for blank in [b' ', b'\t'] {
                    let mut s = vec![b'a'; len];
                    s[at] = blank;
                    assert!(has_blank(&s), "{len} {at}");
                }
            }
            // Bytes next to the blanks' values are not blanks.
            let near: Vec<u8> = [0x08, 0x0a, 0x1f, 0x21, 0xa0, 0x89]
                .iter()
                .copied()
                .cycle()
                .take(len)
                .collect();
            assert!(!has_blank(&near), "{near:?}");
        }
    }
}
