//! Named binds (`:principal`) in a configured query, rewritten into the
//! driver's numbered placeholders: `$1…` for PostgreSQL, `?1…` for SQLite
//! (SQLite's numbered form, so that a name used twice is bound once, as
//! with PostgreSQL).
//!
//! A small tokenizer, not a parser: it knows just enough SQL to leave alone
//! what is not a bind — string literals (`'it''s'`, PostgreSQL's `E'\''`),
//! quoted identifiers (`"a"`, SQLite's `` `a` `` and `[a]`), comments (`--`,
//! `/* */`, nested in PostgreSQL), PostgreSQL's dollar quotes (`$$…$$`,
//! `$tag$…$tag$`) and `::` casts (`:groups::jsonb` is the bind `groups`
//! cast to jsonb). Positional placeholders written in the query (`$1`, `?`)
//! are refused: mixed with rewritten binds they would be bound wrongly.

/// Which placeholders the driver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A query with its binds rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The query the driver prepares.
    pub text: String,
    /// The bind names, in placeholder order: `binds[0]` is `$1` / `?1`.
    pub binds: Vec<String>,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Rewrites `query`'s named binds for `dialect`. The error says what is
/// wrong and where (byte offset).
pub fn rewrite(query: &str, dialect: Dialect) -> Result<Rewritten, String> {
    let b = query.as_bytes();
    let mut text = String::with_capacity(query.len() + 8);
    let mut binds: Vec<String> = Vec::new();
    // Start of the stretch not yet copied to `text`; every cut is at an
    // ASCII byte, so the stretches are whole UTF-8.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        let next = b.get(i + 1).copied();
        match c {
            b'\'' => {
                // E'…' (PostgreSQL): backslash escapes inside.
                let escapes = dialect == Dialect::Postgres
                    && matches!(prev, b'E' | b'e')
                    && (i < 2 || !ident_char(b[i - 2]));
                i = closing_quote(b, i, b'\'', escapes)
                    .ok_or_else(|| format!("unterminated string literal at byte {i}"))?;
            }
            b'"' => {
                i = closing_quote(b, i, b'"', false)
                    .ok_or_else(|| format!("unterminated quoted identifier at byte {i}"))?;
            }
            b'`' if dialect == Dialect::Sqlite => {
                i = closing_quote(b, i, b'`', false)
                    .ok_or_else(|| format!("unterminated quoted identifier at byte {i}"))?;
            }
            b'[' if dialect == Dialect::Sqlite => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b']')
                    .map(|p| i + p + 1)
                    .ok_or_else(|| format!("unterminated [identifier] at byte {i}"))?;
            }
            b'-' if next == Some(b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if next == Some(b'*') => {
                i = block_comment_end(b, i, dialect == Dialect::Postgres)
                    .ok_or_else(|| format!("unterminated /* comment at byte {i}"))?;
            }
            b'$' if ident_char(prev) => i += 1, // part of a PostgreSQL identifier
            b'$' if dialect == Dialect::Postgres => {
                if next.is_some_and(|n| n.is_ascii_digit()) {
                    return Err(format!(
                        "positional placeholder at byte {i}: use named binds (:name)"
                    ));
                }
                // $tag$ … $tag$ (the tag may be empty).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !ident_char(x))
                    .map_or(b.len(), |p| i + 1 + p);
                if b.get(tag_end) == Some(&b'$') && next.is_none_or(|n| n == b'$' || ident_start(n))
                {
                    let tag = &b[i..=tag_end];
                    let body = tag_end + 1;
                    let close = find(&b[body..], tag)
                        .ok_or_else(|| format!("unterminated dollar quote at byte {i}"))?;
                    i = body + close + tag.len();
                } else {
                    i += 1;
                }
            }
            b'?' | b'$' | b'@' if dialect == Dialect::Sqlite => {
                return Err(format!(
                    "positional or driver placeholder `{}` at byte {i}: use named binds (:name)",
                    c as char
                ));
            }
            b':' if next == Some(b':') => i += 2, // a cast
            b':' if next.is_some_and(ident_start) => {
                let start = i + 1;
                let end = b[start..]
                    .iter()
                    .position(|&x| !ident_char(x))
                    .map_or(b.len(), |p| start + p);
                let name = &query[start..end];
                let n = match binds.iter().position(|x| x == name) {
                    Some(p) => p + 1,
                    None => {
                        binds.push(name.to_owned());
                        binds.len()
                    }
                };
                text.push_str(&query[copied..i]);
                text.push(match dialect {
                    Dialect::Postgres => '$',
                    Dialect::Sqlite => '?',
                });
                text.push_str(&n.to_string());
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    text.push_str(&query[copied..]);
    Ok(Rewritten { text, binds })
}

/// The index just past the quote closing the one at `open`; a doubled quote
/// is part of the text, as is a backslashed character when `escapes`.
fn closing_quote(b: &[u8], open: usize, quote: u8, escapes: bool) -> Option<usize> {
    let mut j = open + 1;
    while j < b.len() {
        if escapes && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

/// The index just past the `*/` closing the comment at `open` (nested
/// comments count when `nests`).
fn block_comment_end(b: &[u8], open: usize, nests: bool) -> Option<usize> {
    let mut depth = 1usize;
    let mut j = open + 2;
    while j + 1 < b.len() {
        match (b[j], b[j + 1]) {
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Some(j);
                }
            }
            (b'/', b'*') if nests => {
                depth += 1;
                j += 2;
            }
            _ => j += 1,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pg(q: &str) -> (String, Vec<String>) {
        let r = rewrite(q, Dialect::Postgres).unwrap();
        (r.text, r.binds)
    }

    fn lite(q: &str) -> (String, Vec<String>) {
        let r = rewrite(q, Dialect::Sqlite).unwrap();
        (r.text, r.binds)
    }

    #[test]
    fn binds_become_numbered_placeholders_and_repeat_their_number() {
        let q = "SELECT effect FROM grants WHERE principal = :principal AND bucket=:bucket \
                 AND (:key LIKE prefix || '%' OR principal = :principal)";
        let (text, binds) = pg(q);
        assert_eq!(
            text,
            "SELECT effect FROM grants WHERE principal = $1 AND bucket=$2 \
             AND ($3 LIKE prefix || '%' OR principal = $1)"
        );
        assert_eq!(binds, ["principal", "bucket", "key"]);
        let (text, binds) = lite(q);
        assert_eq!(
            text,
            "SELECT effect FROM grants WHERE principal = ?1 AND bucket=?2 \
             AND (?3 LIKE prefix || '%' OR principal = ?1)"
        );
        assert_eq!(binds, ["principal", "bucket", "key"]);
    }

    #[test]
    fn literals_identifiers_and_comments_are_left_alone() {
        let q = "SELECT ':a', 'it''s :b', \"col:c\", E'\\':d', x -- :e\n/* :f /* :g */ :h */ FROM t WHERE y = :z";
        let (text, binds) = pg(q);
        assert_eq!(binds, ["z"]);
        assert_eq!(text, q.replace(":z", "$1"));
        let q = "SELECT `:a`, [:b], ':c' /* :d */ FROM t WHERE y = :z -- :e";
        let (text, binds) = lite(q);
        assert_eq!(binds, ["z"]);
        assert_eq!(text, q.replace(":z", "?1"));
        // SQLite comments do not nest: the first */ ends it.
        let (_, binds) = lite("/* /* */ :a");
        assert_eq!(binds, ["a"]);
    }

    #[test]
    fn casts_and_dollar_quotes_stay_postgresql() {
        let (text, binds) =
            pg("SELECT $$ :a $$, $t$ :b $$ $t$ FROM g WHERE g.name = ANY(ARRAY(SELECT jsonb_array_elements_text(:groups::jsonb))) AND n::text = :x");
        assert_eq!(binds, ["groups", "x"]);
        assert_eq!(
            text,
            "SELECT $$ :a $$, $t$ :b $$ $t$ FROM g WHERE g.name = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb))) AND n::text = $2"
        );
        // `$` inside an identifier, a slice with a number.
        let (text, binds) = pg("SELECT a$b, arr[1:2] FROM t WHERE k = :k");
        assert_eq!(binds, ["k"]);
        assert_eq!(text, "SELECT a$b, arr[1:2] FROM t WHERE k = $1");
    }

    #[test]
    fn non_ascii_text_survives() {
        let (text, binds) = pg("SELECT 'é' AS ü WHERE p = :principal AND q = 'ß'");
        assert_eq!(binds, ["principal"]);
        assert_eq!(text, "SELECT 'é' AS ü WHERE p = $1 AND q = 'ß'");
    }

    #[test]
    fn positional_placeholders_and_unterminated_tokens_are_refused() {
        assert!(rewrite("SELECT 1 WHERE a = $1", Dialect::Postgres)
            .unwrap_err()
            .contains("positional"));
        for q in ["SELECT 1 WHERE a = ?", "SELECT 1 WHERE a = $a", "SELECT @a"] {
            assert!(
                rewrite(q, Dialect::Sqlite)
                    .unwrap_err()
                    .contains("named binds"),
                "{q}"
            );
        }
        // `?` is a jsonb operator in PostgreSQL, not a placeholder.
        assert_eq!(pg("SELECT j ? 'k' FROM t").1, Vec::<String>::new());
        for q in ["SELECT 'a", "SELECT \"a", "SELECT /* a", "SELECT $x$ a"] {
            assert!(rewrite(q, Dialect::Postgres).is_err(), "{q}");
        }
    }
}
