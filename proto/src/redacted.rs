//! [`Redacted`]: a value that never shows itself in `Debug` output, so a
//! secret inside a struct cannot reach a log line, an error or a panic
//! message through `{:?}`.

use std::fmt;

/// A secret (a key, a token). Read it with [`Redacted::expose`], where it is
/// used and nowhere else.
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: impl Into<T>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Redacted<String>,
        }
        let h = Holder {
            token: Redacted::new("tok-123"),
        };
        assert_eq!(format!("{h:?}"), "Holder { token: <redacted> }");
        assert_eq!(format!("{h:#?}").matches("tok-123").count(), 0);
        assert_eq!(h.token.expose(), "tok-123");
    }
}
