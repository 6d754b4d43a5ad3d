//! Which `[[buckets]]` entry serves a client's bucket name, and what the
//! bucket is called at the backend.
//!
//! An entry's name is exact (`data`) or a glob (`team-*`, `log-????`: `*` is
//! any run of characters, `?` exactly one). An exact entry wins over every
//! pattern; no two patterns may match a common name ([`globs_overlap`]
//! decides that exactly), so at most one pattern matches any name. A name no
//! entry matches goes to the default backend when one is set.
//!
//! An entry's `backend_bucket` is a [`Template`]: `{name}` stands for the
//! client's bucket name (`prod-{name}`). A name built from a template, or
//! taken as is by a pattern or the default, must be a valid S3 bucket name
//! ([`valid_s3_bucket_name`]); that is checked per request, because the
//! client chose it.
//!
//! Both planes use this module: the control plane to route, the data plane
//! to map a backend's ListBuckets answer back to client names.

use std::collections::HashMap;

/// The placeholder for the client's bucket name in a template.
pub const NAME: &str = "{name}";

/// Whether `name` is a glob rather than an exact bucket name.
pub fn is_pattern(name: &str) -> bool {
    name.bytes().any(|c| c == b'*' || c == b'?')
}

/// Characters of bucket names the gateway accepts in entries (S3's legacy
/// rules: letters, digits, `.`, `-`, `_`), plus `*` and `?` in patterns.
pub fn valid_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("invalid bucket name {name:?}"));
    }
    let ok = name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'*' | b'?'));
    if !ok {
        return Err(format!(
            "invalid bucket name {name:?} (letters, digits, '.', '-', '_', and '*' or '?' in a pattern)"
        ));
    }
    if name.bytes().all(|c| c == b'*') {
        // Matches everything: that is what `default_backend` is for.
        return Err(format!(
            "pattern {name:?} matches every name; use default_backend instead"
        ));
    }
    Ok(())
}

/// S3's rules for a new bucket's name: 3 to 63 characters of lower-case
/// letters, digits, `.` and `-`, starting and ending with a letter or digit,
/// no `..`, and not shaped like an IPv4 address.
pub fn valid_s3_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// Whether glob `pattern` matches `name` (`*`: any run, `?`: one byte;
/// bucket names are ASCII).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Greedy with backtracking to the last `*`: linear in practice.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some(b'*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == b'?' || c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// Whether some name matches both globs. Exact: a search over pairs of
/// positions, where `(i, j)` means some string took `a` to `i` and `b` to
/// `j` together. A `*` either ends (matches nothing more) or absorbs the
/// one character the other side consumes; two non-star tokens must agree
/// on a character (`?` agrees with anything).
pub fn globs_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let width = b.len() + 1;
    let mut seen = vec![false; (a.len() + 1) * width];
    let mut stack = vec![(0usize, 0usize)];
    while let Some((i, j)) = stack.pop() {
        let cell = i * width + j;
        if seen[cell] {
            continue;
        }
        seen[cell] = true;
        if i == a.len() && j == b.len() {
            return true;
        }
        let (x, y) = (a.get(i).copied(), b.get(j).copied());
        if x == Some(b'*') {
            stack.push((i + 1, j));
            if y.is_some() && y != Some(b'*') {
                stack.push((i, j + 1));
            }
        }
        if y == Some(b'*') {
            stack.push((i, j + 1));
            if x.is_some() && x != Some(b'*') {
                stack.push((i + 1, j));
            }
        }
        if let (Some(x), Some(y)) = (x, y) {
            if x != b'*' && y != b'*' && (x == y || x == b'?' || y == b'?') {
                stack.push((i + 1, j + 1));
            }
        }
    }
    false
}

/// A `backend_bucket` template: literal text with at most one `{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Template {
    prefix: String,
    /// `Some(suffix)` when the template holds `{name}`.
    suffix: Option<String>,
}

impl Template {
    /// Parses `text`; `None` means `{name}` (the client's name as is).
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        let Some(text) = text else {
            return Ok(Self {
                prefix: String::new(),
                suffix: Some(String::new()),
            });
        };
        let (prefix, suffix) = match text.split_once(NAME) {
            Some((p, s)) => (p, Some(s)),
            None => (text, None),
        };
        let literal = |part: &str| {
            part.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        };
        if !literal(prefix) || !suffix.is_none_or(literal) {
            return Err(format!(
                "invalid backend_bucket {text:?}: letters, digits, '.', '-', '_' and at most one {NAME}"
            ));
        }
        if suffix.is_none() && text.is_empty() {
            return Err("backend_bucket must not be empty".to_owned());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.map(str::to_owned),
        })
    }

    /// Whether the template holds `{name}`.
    pub fn has_name(&self) -> bool {
        self.suffix.is_some()
    }

    /// The backend bucket of client bucket `name`.
    pub fn apply(&self, name: &str) -> String {
        match &self.suffix {
            Some(suffix) => {
                let mut out = String::with_capacity(self.prefix.len() + name.len() + suffix.len());
                out.push_str(&self.prefix);
                out.push_str(name);
                out.push_str(suffix);
                out
            }
            None => self.prefix.clone(),
        }
    }

    /// The client name `apply` turned into `backend_bucket`, if any (a
    /// template without `{name}` has no single answer: `None`).
    pub fn reverse<'a>(&self, backend_bucket: &'a str) -> Option<&'a str> {
        let suffix = self.suffix.as_deref()?;
        backend_bucket
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(suffix)
            .filter(|n| !n.is_empty())
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.suffix {
            Some(s) => write!(f, "{}{NAME}{s}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}

/// How a name was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched<'a> {
    Exact,
    /// By this pattern.
    Pattern(&'a str),
    /// By no entry: the default backend.
    Default,
}

impl Matched<'_> {
    /// The entry's name (the pattern for a pattern); empty for the default.
    pub fn entry<'b>(&'b self, bucket: &'b str) -> &'b str {
        match self {
            Matched::Exact => bucket,
            Matched::Pattern(p) => p,
            Matched::Default => "",
        }
    }
}

/// The answer for one client bucket name.
#[derive(Debug)]
pub struct Resolved<'a, T> {
    pub value: &'a T,
    pub matched: Matched<'a>,
    /// The bucket's name at the backend.
    pub backend_bucket: String,
}

/// A name that matched, but whose backend name is no valid S3 bucket name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bucket name {0:?}")]
pub struct InvalidBucketName(pub String);

/// The entries, in lookup form. `T` is what an entry carries (the control
/// plane: a placement; the data plane: a backend's name).
#[derive(Debug, Clone)]
pub struct Table<T> {
    exact: HashMap<String, (Template, T)>,
    patterns: Vec<(String, Template, T)>,
    default: Option<T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            patterns: Vec::new(),
            default: None,
        }
    }
}

impl<T> Table<T> {
    /// Adds an entry. A pattern that can match a name another pattern
    /// matches is refused, naming that other pattern; so is a pattern
    /// whose template has no `{name}` (every bucket would be one).
    pub fn insert(&mut self, name: &str, template: Template, value: T) -> Result<(), String> {
        valid_entry_name(name)?;
        if !is_pattern(name) {
            self.exact.insert(name.to_owned(), (template, value));
            return Ok(());
        }
        if !template.has_name() {
            return Err(format!(
                "pattern {name:?}: backend_bucket {:?} must contain {NAME} (otherwise every matching bucket would be the same backend bucket)",
                template.to_string()
            ));
        }
        if let Some((other, _, _)) = self
            .patterns
            .iter()
            .find(|(p, _, _)| globs_overlap(p, name))
        {
            return Err(format!(
                "pattern {name:?} overlaps pattern {other:?} (some bucket name matches both)"
            ));
        }
        self.patterns.push((name.to_owned(), template, value));
        Ok(())
    }

    pub fn set_default(&mut self, value: Option<T>) {
        self.default = value;
    }

    pub fn default_value(&self) -> Option<&T> {
        self.default.as_ref()
    }

    /// Every entry's value (exact, then patterns, then the default).
    pub fn values(&self) -> impl Iterator<Item = (&str, &T)> {
        self.exact
            .iter()
            .map(|(n, (_, v))| (n.as_str(), v))
            .chain(self.patterns.iter().map(|(n, _, v)| (n.as_str(), v)))
            .chain(self.default.iter().map(|v| ("", v)))
    }

    /// The entry serving `bucket`: exact first, then the one pattern that
    /// matches, then the default. `Ok(None)`: nothing serves it.
    pub fn resolve(&self, bucket: &str) -> Result<Option<Resolved<'_, T>>, InvalidBucketName> {
        if let Some((template, value)) = self.exact.get(bucket) {
            return Ok(Some(Resolved {
                value,
                matched: Matched::Exact,
                backend_bucket: template.apply(bucket),
            }));
        }
        let (value, matched, backend_bucket) = match self
            .patterns
            .iter()
            .find(|(p, _, _)| glob_matches(p, bucket))
        {
            Some((p, template, value)) => {
                (value, Matched::Pattern(p.as_str()), template.apply(bucket))
            }
            None => match &self.default {
                Some(value) => (value, Matched::Default, bucket.to_owned()),
                None => return Ok(None),
            },
        };
        // The client chose this name: it must be one S3 accepts.
        if !valid_s3_bucket_name(bucket) || !valid_s3_bucket_name(&backend_bucket) {
            return Err(InvalidBucketName(bucket.to_owned()));
        }
        Ok(Some(Resolved {
            value,
            matched,
            backend_bucket,
        }))
    }

    /// The client names that [`Table::resolve`] maps to `backend_bucket`
    /// on an entry whose value `on` accepts (a backend's bucket listed
    /// back to its client names). Usually one; none for a bucket the
    /// gateway does not serve.
    pub fn reverse(&self, backend_bucket: &str, on: impl Fn(&T) -> bool) -> Vec<String> {
        let mut candidates: Vec<&str> = Vec::new();
        for (name, (template, value)) in &self.exact {
            if on(value) && template.apply(name) == backend_bucket {
                candidates.push(name);
            }
        }
        for (_, template, value) in &self.patterns {
            if on(value) {
                candidates.extend(template.reverse(backend_bucket));
            }
        }
        if self.default.as_ref().is_some_and(&on) {
            candidates.push(backend_bucket);
        }
        let mut out: Vec<String> = Vec::new();
        for name in candidates {
            // Forward again: the name must really land here (an exact
            // entry or an earlier rule may take it elsewhere).
            let lands = matches!(
                self.resolve(name),
                Ok(Some(r)) if on(r.value) && r.backend_bucket == backend_bucket
            );
            if lands && !out.iter().any(|o| o == name) {
                out.push(name.to_owned());
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn table() -> Table<&'static str> {
        let mut t = Table::default();
        let tpl = |s: &str| Template::parse(Some(s)).unwrap();
        t.insert("data", tpl("data-prod"), "minio").unwrap();
        t.insert("team-x", Template::parse(None).unwrap(), "ceph")
            .unwrap();
        t.insert("team-*", tpl("prod-{name}"), "minio").unwrap();
        t.insert("log-??", tpl("{name}"), "ceph").unwrap();
        t
    }

    #[test]
    fn exact_wins_then_pattern_then_default() {
        let mut t = table();
        let r = t.resolve("team-x").unwrap().unwrap();
        assert_eq!(
            (*r.value, r.matched, r.backend_bucket.as_str()),
            ("ceph", Matched::Exact, "team-x")
        );
        let r = t.resolve("team-a").unwrap().unwrap();
        assert_eq!(
            (*r.value, r.matched, r.backend_bucket.as_str()),
            ("minio", Matched::Pattern("team-*"), "prod-team-a")
        );
        let r = t.resolve("data").unwrap().unwrap();
        assert_eq!(r.backend_bucket, "data-prod");
        assert!(t.resolve("log-1").unwrap().is_none());
        assert!(t.resolve("other").unwrap().is_none());
        t.set_default(Some("garage"));
        let r = t.resolve("other").unwrap().unwrap();
        assert_eq!(
            (*r.value, r.matched, r.backend_bucket.as_str()),
            ("garage", Matched::Default, "other")
        );
        assert_eq!(*t.resolve("log-12").unwrap().unwrap().value, "ceph");
    }

    #[test]
    fn client_names_routed_by_pattern_or_default_must_be_valid() {
        let mut t = table();
        t.set_default(Some("garage"));
        for bad in [
            "team-UPPER",
            "team-a..b",
            "team-",
            "ab",
            "192.168.1.1",
            "x_y",
        ] {
            assert_eq!(
                t.resolve(bad),
                Err(InvalidBucketName(bad.to_owned())),
                "{bad}"
            );
        }
        // An exact entry keeps its (legacy) name.
        let mut t = Table::default();
        t.insert("Legacy_Bucket", Template::parse(None).unwrap(), 1)
            .unwrap();
        assert!(t.resolve("Legacy_Bucket").unwrap().is_some());
        // A template may make a valid client name too long.
        let mut t = Table::default();
        t.insert(
            "a*",
            Template::parse(Some("{name}-with-a-long-suffix-for-production-use-only-x")).unwrap(),
            1,
        )
        .unwrap();
        assert!(t.resolve("abc").is_ok());
        assert!(t.resolve("abcdefghijklmnopqrstu").is_err());
    }

    impl<T: PartialEq> PartialEq for Resolved<'_, T> {
        fn eq(&self, o: &Self) -> bool {
            self.value == o.value
                && self.matched == o.matched
                && self.backend_bucket == o.backend_bucket
        }
    }

    #[test]
    fn reverse_finds_the_client_name() {
        let mut t = table();
        assert_eq!(t.reverse("prod-team-a", |v| *v == "minio"), ["team-a"]);
        assert!(t.reverse("prod-team-a", |v| *v == "ceph").is_empty());
        assert_eq!(t.reverse("data-prod", |v| *v == "minio"), ["data"]);
        // `team-x` is exact on ceph: the pattern's rename does not apply.
        assert!(t.reverse("prod-team-x", |v| *v == "minio").is_empty());
        assert_eq!(t.reverse("team-x", |v| *v == "ceph"), ["team-x"]);
        // Not served: no entry, no default.
        assert!(t.reverse("stray", |_| true).is_empty());
        t.set_default(Some("minio"));
        assert_eq!(t.reverse("stray", |v| *v == "minio"), ["stray"]);
        // `data` is exact elsewhere: its backend name is data-prod, so the
        // backend bucket `data` is not the client's `data`.
        assert!(t.reverse("data", |v| *v == "minio").is_empty());
    }

    #[test]
    fn overlapping_patterns_are_refused() {
        let mut t = table();
        let e = t
            .insert("te*", Template::parse(None).unwrap(), "x")
            .unwrap_err();
        assert!(e.contains("\"te*\" overlaps pattern \"team-*\""), "{e}");
        assert!(t
            .insert("tx-*", Template::parse(None).unwrap(), "x")
            .is_ok());
        assert!(t
            .insert("p-*", Template::parse(Some("fixed")).unwrap(), "x")
            .unwrap_err()
            .contains("must contain {name}"));
        assert!(t.insert("**", Template::parse(None).unwrap(), "x").is_err());
    }

    #[test]
    fn overlap_cases() {
        for (a, b, want) in [
            ("team-*", "te*", true),
            ("team-*", "*-x", true),
            ("team-*", "tx*", false),
            ("a*b", "a*c", false),
            ("a*b", "*b", true),
            ("a?c", "ab*", true),
            ("a?c", "abd", false),
            ("log-??", "log-?", false),
            ("log-??", "log-*", true),
            ("*a*", "*b*", true),
            ("x", "x", true),
            ("?", "", false),
        ] {
            assert_eq!(globs_overlap(a, b), want, "{a} {b}");
            assert_eq!(globs_overlap(b, a), want, "{b} {a}");
        }
    }

    #[test]
    fn templates() {
        let t = Template::parse(Some("prod-{name}-eu")).unwrap();
        assert_eq!(t.apply("x"), "prod-x-eu");
        assert_eq!(t.reverse("prod-x-eu"), Some("x"));
        assert_eq!(t.reverse("prod--eu"), None);
        assert_eq!(t.reverse("dev-x-eu"), None);
        assert_eq!(t.to_string(), "prod-{name}-eu");
        assert_eq!(Template::parse(None).unwrap().to_string(), "{name}");
        for bad in ["a{name}{name}", "a/b", "{nam}", "", "x{name"] {
            assert!(Template::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    /// Every string over `alphabet` up to `len` characters.
    fn strings(alphabet: &[u8], len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&c| format!("{s}{}", c as char)))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    proptest! {
        /// `globs_overlap` agrees with a brute-force search for a witness.
        /// A witness, if one exists, needs at most |a| + |b| characters,
        /// and one character outside both patterns' literals stands for
        /// every other.
        #[test]
        fn overlap_matches_brute_force(a in "[ab*?]{0,4}", b in "[ab*?]{0,4}") {
            let witness = strings(b"abc", a.len() + b.len())
                .into_iter()
                .find(|w| glob_matches(&a, w) && glob_matches(&b, w));
            prop_assert_eq!(globs_overlap(&a, &b), witness.is_some(), "witness {:?}", witness);
        }

        #[test]
        fn glob_matches_like_a_regex(p in "[ab*?]{0,5}", name in "[abc]{0,6}") {
            let regex: String = p.chars().map(|c| match c {
                '*' => ".*".to_owned(),
                '?' => ".".to_owned(),
                c => c.to_string(),
            }).collect();
            let re = regex_lite_match(&regex, &name);
            prop_assert_eq!(glob_matches(&p, &name), re);
        }

        #[test]
        fn template_round_trips(prefix in "[a-z0-9-]{0,5}", suffix in "[a-z0-9-]{0,5}", name in "[a-z0-9][a-z0-9-]{0,8}") {
            let t = Template::parse(Some(&format!("{prefix}{{name}}{suffix}"))).unwrap();
            let applied = t.apply(&name);
            prop_assert_eq!(t.reverse(&applied), Some(name.as_str()));
        }
    }

    /// A tiny backtracking matcher for `.`/`.*`/literals, independent of
    /// `glob_matches`.
    fn regex_lite_match(re: &str, s: &str) -> bool {
        fn go(re: &[u8], s: &[u8]) -> bool {
            match re {
                [] => s.is_empty(),
                [b'.', b'*', rest @ ..] => (0..=s.len()).any(|k| go(rest, &s[k..])),
                [b'.', rest @ ..] => !s.is_empty() && go(rest, &s[1..]),
                [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
            }
        }
        go(re.as_bytes(), s.as_bytes())
    }
}
