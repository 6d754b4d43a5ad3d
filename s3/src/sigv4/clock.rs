//! Clock checks and `x-amz-date` timestamps.

use super::*;

// === check_time ===

/// Clock checks, `now` in unix seconds.
///
/// Header auth: `|now - timestamp| <= MAX_CLOCK_SKEW_SECS`. Presigned: not
/// before `timestamp - MAX_CLOCK_SKEW_SECS`, not after `timestamp + expires`.
/// Both: the credential date must be the signing day.
pub fn check_time(auth: &AuthRequest, now: i64) -> Result<(), VerifyError> {
    if auth.amz_date.get(..8) != Some(auth.scope.date()) {
        return Err(VerifyError::Malformed {
            presigned: auth.is_presigned(),
            reason: "the credential date does not match the request date",
        });
    }
    let (now, ts, skew) = (
        i128::from(now),
        i128::from(auth.timestamp),
        i128::from(MAX_CLOCK_SKEW_SECS),
    );
    match auth.kind {
        AuthKind::Header => {
            if (now - ts).abs() > skew {
                return Err(VerifyError::Skewed);
            }
        }
        AuthKind::Presigned { expires } => {
            if now < ts - skew {
                return Err(VerifyError::NotYetValid);
            }
            if now > ts + i128::from(expires) {
                return Err(VerifyError::Expired);
            }
        }
    }
    Ok(())
}

/// Parses `YYYYMMDDTHHMMSSZ` into unix seconds; anything else is `None`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let hour = u8::try_from(num(9..11)?).ok()?;
    let minute = u8::try_from(num(11..13)?).ok()?;
    let second = u8::try_from(num(13..15)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(hour, minute, second).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Formats unix seconds as `YYYYMMDDTHHMMSSZ`, the inverse of [`parse_amz_date`].
pub fn format_amz_date(unix: i64) -> Option<String> {
    let stamp = amz_date_bytes(unix)?;
    Some(stamp.iter().map(|&b| char::from(b)).collect())
}

/// [`format_amz_date`] into a stack buffer: no allocation, no formatter
/// (the signer calls this on every forwarded request). `None` outside the
/// years 0000–9999.
pub fn amz_date_bytes(unix: i64) -> Option<[u8; 16]> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    let year = u16::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let mut out = *b"00000000T000000Z";
    let mut put = |at: usize, width: usize, mut value: u16| {
        for slot in out[at..at + width].iter_mut().rev() {
            // `value % 10` is one digit.
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(4, 2, u16::from(u8::from(t.month())));
    put(6, 2, u16::from(t.day()));
    put(9, 2, u16::from(t.hour()));
    put(11, 2, u16::from(t.minute()));
    put(13, 2, u16::from(t.second()));
    Some(out)
}
