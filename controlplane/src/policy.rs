//! Built-in rules: principal/group × action × bucket/key-glob, allow or deny.
//!
//! Evaluation looks at every rule; an explicit deny beats any allow, and no
//! matching allow means deny. Each decision names the rule that decided and
//! the widest scope over which the same answer holds, so the data plane can
//! cache it for every request it covers: the bucket when no key glob involved
//! depends on the key, else the shortest prefix of the key over which every
//! glob involved gives the same answer, else the exact key.

use s3gate_proto::{AuthorizeRequest, Decision, Principal, Resource, Scope};
use wildmatch::WildMatch;

use crate::config::Effect;
use crate::state::RuleRecord;

#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// The rule's id, for reasons and Explain.
    id: String,
    effect: Effect,
    principals: Vec<PrincipalMatch>,
    actions: Vec<WildMatch>,
    resources: Vec<ResourcePattern>,
}

#[derive(Debug)]
enum PrincipalMatch {
    Anyone,
    Name(String),
    Group(String),
}

/// `bucket` (the bucket itself) or `bucket/key-glob`.
#[derive(Debug)]
struct ResourcePattern {
    bucket: WildMatch,
    /// `None`: the pattern names the bucket itself.
    key: Option<Glob>,
}

#[derive(Debug)]
struct Glob {
    matcher: WildMatch,
    /// The pattern matches every key (`*`).
    matches_all: bool,
    /// The text before the first wildcard: every match starts with it.
    literal: String,
    /// The pattern is `literal` followed by `*`s only (at least one), so it
    /// matches exactly the keys starting with `literal`.
    prefix_glob: bool,
}

impl Policy {
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a RuleRecord>) -> Self {
        let rules = rules
            .into_iter()
            .map(|r| Rule {
                id: r.id.clone(),
                effect: r.effect,
                principals: r
                    .principals
                    .iter()
                    .map(|p| match p.as_str() {
                        "*" => PrincipalMatch::Anyone,
                        p => match p.strip_prefix("group:") {
                            Some(g) => PrincipalMatch::Group(g.to_owned()),
                            None => PrincipalMatch::Name(p.to_owned()),
                        },
                    })
                    .collect(),
                actions: r.actions.iter().map(|a| WildMatch::new(a)).collect(),
                resources: r
                    .resources
                    .iter()
                    .map(|r| ResourcePattern::parse(r))
                    .collect(),
            })
            .collect();
        Self { rules }
    }

    /// Decides one request. `ttl` is what the decision may be cached for.
    pub fn decide(&self, req: &AuthorizeRequest, ttl: std::time::Duration) -> Decision {
        self.explain(req, ttl).0
    }

    /// Decides one request and names the rule that decided (none: nothing
    /// allowed it).
    pub fn explain(
        &self,
        req: &AuthorizeRequest,
        ttl: std::time::Duration,
    ) -> (Decision, Option<&str>) {
        let mut allow: Option<&str> = None;
        let mut deny: Option<&str> = None;
        // How many leading bytes of the key the answer depends on: every
        // pattern that applies gives the same answer for all keys sharing
        // them. `Some(0)`: none (the whole bucket); `None`: the exact key.
        let mut depends_on = Some(0);
        for rule in &self.rules {
            if !rule.applies_to(&req.principal, &req.action) {
                continue;
            }
            for pattern in &rule.resources {
                if !pattern.bucket.matches(&req.bucket) {
                    continue;
                }
                depends_on = depends_on
                    .zip(pattern.depends_on(&req.resource))
                    .map(|(a, b)| a.max(b));
                if pattern.matches(&req.resource) {
                    match rule.effect {
                        Effect::Allow => {
                            allow.get_or_insert(&rule.id);
                        }
                        Effect::Deny => {
                            deny.get_or_insert(&rule.id);
                        }
                    }
                }
            }
        }
        let scope = scope(depends_on, req.resource.key());
        let (allow, reason, rule) = match (deny, allow) {
            (Some(id), _) => (false, format!("denied by rule {id}"), Some(id)),
            (None, Some(id)) => (true, format!("allowed by rule {id}"), Some(id)),
            (None, None) => (false, "no rule allows this request".to_owned(), None),
        };
        (
            Decision {
                allow,
                reason,
                scope,
                ttl,
                // The chain names the source with the rule.
                decided_by: None,
            },
            rule,
        )
    }

    /// Buckets from `candidates` on which `principal` has at least one allow rule.
    pub fn visible<'a>(
        &self,
        principal: &Principal,
        candidates: impl Iterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut out: Vec<String> = candidates
            .filter(|bucket| {
                self.rules.iter().any(|r| {
                    r.effect == Effect::Allow
                        && r.principals.iter().any(|p| p.matches(principal))
                        && r.resources.iter().any(|p| p.bucket.matches(bucket))
                })
            })
            .map(str::to_owned)
            .collect();
        out.sort();
        out
    }
}

/// Checks one action pattern of a rule against the actions s3gate asks
/// about ([`s3gate_s3::request::known_actions`]), as the matcher will use it
/// (case-sensitive, `*` and `?` globs): an exact name must be one of them, a
/// glob must match at least one. Anything else would never apply, which for
/// a typo in a deny rule means silently allowing what it meant to refuse.
pub fn check_action(pattern: &str) -> Result<(), String> {
    let known = s3gate_s3::request::known_actions();
    if pattern.contains(['*', '?']) {
        let glob = WildMatch::new(pattern);
        return if known.iter().any(|a| glob.matches(a)) {
            Ok(())
        } else {
            Err(format!(
                "action pattern {pattern:?} matches no S3 action s3gate authorizes"
            ))
        };
    }
    if known.contains(&pattern) {
        return Ok(());
    }
    let mut msg = format!("action {pattern:?} is not an S3 action s3gate authorizes");
    if let Some(near) = nearest(pattern, known) {
        msg.push_str(&format!(" (did you mean {near:?}?)"));
    }
    Err(msg)
}

/// The known action closest to `typo` (ignoring case), if it is close
/// enough to be what was meant.
fn nearest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    let typo = typo.to_ascii_lowercase();
    let typo = typo.strip_prefix("s3:").unwrap_or(&typo);
    known
        .iter()
        .map(|a| {
            let name = a.strip_prefix("s3:").unwrap_or(a).to_ascii_lowercase();
            (edit_distance(typo, &name), *a)
        })
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance over bytes (action names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The bucket part of a rule resource, as the matcher reads it: `*` for
/// `*`, else what comes before the first `/`.
pub fn resource_bucket(resource: &str) -> &str {
    resource
        .split_once('/')
        .map_or(resource, |(bucket, _)| bucket)
}

/// Whether the bucket part of `resource` matches `bucket` (an exact name
/// or a pattern entry).
pub fn resource_names_bucket(resource: &str, bucket: &str) -> bool {
    // A bucket entry may be a pattern: the resource names it when some
    // bucket name matches both.
    s3gate_proto::buckets::globs_overlap(resource_bucket(resource), bucket)
}

/// The scope of an answer that depends on the first `depends_on` bytes of
/// `key` (rounded up to a character boundary: a longer prefix still holds).
fn scope(depends_on: Option<usize>, key: Option<&str>) -> Scope {
    match (depends_on, key) {
        (Some(0), _) => Scope::Bucket,
        (Some(n), Some(key)) => (n..=key.len())
            .find(|&i| key.is_char_boundary(i))
            .and_then(|i| key.get(..i))
            .map_or(Scope::Exact, |p| Scope::Prefix(p.to_owned())),
        _ => Scope::Exact,
    }
}

impl Rule {
    fn applies_to(&self, principal: &Principal, action: &str) -> bool {
        self.principals.iter().any(|p| p.matches(principal))
            && self.actions.iter().any(|a| a.matches(action))
    }
}

impl PrincipalMatch {
    fn matches(&self, principal: &Principal) -> bool {
        match self {
            Self::Anyone => true,
            Self::Name(n) => !principal.is_anonymous() && *principal.name == **n,
            Self::Group(g) => principal.groups.iter().any(|pg| **pg == **g),
        }
    }
}

impl ResourcePattern {
    fn parse(raw: &str) -> Self {
        if raw == "*" {
            return Self {
                bucket: WildMatch::new("*"),
                key: Some(Glob::new("*")),
            };
        }
        match raw.split_once('/') {
            Some((bucket, key)) => Self {
                bucket: WildMatch::new(bucket),
                key: Some(Glob::new(key)),
            },
            None => Self {
                bucket: WildMatch::new(raw),
                key: None,
            },
        }
    }

    /// Whether this pattern (its bucket part already matched) covers `resource`.
    ///
    /// - the bucket itself: only a pattern without a key part (or `*`);
    /// - an object: a key glob that matches the key;
    /// - a listing of `prefix`: a bucket pattern (listing is a bucket
    ///   permission), or a key glob matching the prefix, so `data/reports/*`
    ///   allows listing `reports/…` but not the whole bucket.
    fn matches(&self, resource: &Resource) -> bool {
        match (resource, &self.key) {
            (Resource::Bucket, None) => true,
            (Resource::Bucket, Some(g)) => g.matches_all,
            (Resource::Object(_), None) => false,
            (Resource::Object(k), Some(g)) => g.matcher.matches(k),
            (Resource::Prefix(_), None) => true,
            (Resource::Prefix(p), Some(g)) => g.matcher.matches(p),
        }
    }

    /// The shortest prefix of `resource`'s key (in bytes) over whose
    /// extensions `matches` gives one answer: 0 when the key does not
    /// matter, `None` when no prefix of the key will do.
    fn depends_on(&self, resource: &Resource) -> Option<usize> {
        match (resource, &self.key) {
            (Resource::Bucket, _) => Some(0),
            (Resource::Object(_) | Resource::Prefix(_), None) => Some(0),
            (Resource::Object(k) | Resource::Prefix(k), Some(g)) => g.depends_on(k),
        }
    }
}

impl Glob {
    fn new(pattern: &str) -> Self {
        // WildMatch (2.x) knows `*` and `?` only, has no escapes and compares
        // characters exactly: everything before the first of them is literal.
        let (literal, rest) = pattern
            .find(['*', '?'])
            .map_or((pattern, ""), |i| pattern.split_at(i));
        Self {
            matcher: WildMatch::new(pattern),
            matches_all: !pattern.is_empty() && pattern.bytes().all(|b| b == b'*'),
            literal: literal.to_owned(),
            prefix_glob: !rest.is_empty() && rest.bytes().all(|b| b == b'*'),
        }
    }

    /// See [`ResourcePattern::depends_on`].
    fn depends_on(&self, key: &str) -> Option<usize> {
        if key.starts_with(&self.literal) {
            // A prefix glob matches every key that starts with its literal.
            // Otherwise what follows the literal decides; conservatively,
            // no prefix of the key settles that.
            return self.prefix_glob.then_some(self.literal.len());
        }
        // The key leaves the literal at byte `d`: no key starting with its
        // first `d + 1` bytes matches. If the key ends inside the literal
        // instead, some of its extensions match and others do not.
        let d = key
            .bytes()
            .zip(self.literal.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        (d < key.len()).then_some(d + 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn rule(
        effect: Effect,
        principals: &[&str],
        actions: &[&str],
        resources: &[&str],
    ) -> RuleRecord {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        RuleRecord {
            id: format!("{effect:?}:{}", resources.join(",")),
            effect,
            principals: v(principals),
            actions: v(actions),
            resources: v(resources),
        }
    }

    #[test]
    fn actions_are_checked_against_the_known_list() {
        for ok in [
            "s3:GetObject",
            "s3:ListAllMyBuckets",
            "s3:*",
            "s3:Get*",
            "*",
            "s3:?utObject",
        ] {
            assert_eq!(check_action(ok), Ok(()), "{ok}");
        }
        let err = |a: &str| check_action(a).unwrap_err();
        assert_eq!(
            err("s3:getobject"),
            "action \"s3:getobject\" is not an S3 action s3gate authorizes (did you mean \"s3:GetObject\"?)"
        );
        assert_eq!(
            err("s3:GetObjectTorrent"),
            "action \"s3:GetObjectTorrent\" is not an S3 action s3gate authorizes"
        );
        assert_eq!(
            err("GetObject"),
            "action \"GetObject\" is not an S3 action s3gate authorizes (did you mean \"s3:GetObject\"?)"
        );
        assert_eq!(
            err("s3:Put*Torrent"),
            "action pattern \"s3:Put*Torrent\" matches no S3 action s3gate authorizes"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn resource_bucket_parts() {
        assert!(resource_names_bucket("data", "data"));
        assert!(resource_names_bucket("data/reports/*", "data"));
        assert!(resource_names_bucket("*", "data"));
        assert!(resource_names_bucket("da*/x", "data"));
        assert!(!resource_names_bucket("dta/*", "data"));
        assert!(!resource_names_bucket("data-prod", "data"));
        assert!(resource_names_bucket("team-x/*", "team-*"));
        assert!(!resource_names_bucket("tx-1", "team-*"));
    }

    fn who(name: &str, groups: &[&str]) -> Principal {
        Principal {
            name: Arc::from(name),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            access_key: None,
        }
    }

    fn check(
        policy: &Policy,
        p: &Principal,
        action: &'static str,
        bucket: &str,
        resource: Resource,
    ) -> Decision {
        policy.decide(
            &AuthorizeRequest {
                principal: p.clone(),
                action: std::borrow::Cow::Borrowed(action),
                bucket: bucket.into(),
                resource,
                context: Default::default(),
            },
            Duration::from_secs(1),
        )
    }

    fn sample() -> Policy {
        Policy::new(&[
            rule(
                Effect::Allow,
                &["alice", "group:analysts"],
                &["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
                &["data", "data/reports/*"],
            ),
            rule(Effect::Allow, &["alice"], &["s3:*"], &["data/*"]),
            rule(Effect::Deny, &["alice"], &["s3:*"], &["data/secret/*"]),
            rule(Effect::Allow, &["*"], &["s3:GetObject"], &["public/*"]),
        ])
    }

    #[test]
    fn deny_wins_and_scopes() {
        let p = sample();
        let alice = who("alice", &[]);
        let d = check(
            &p,
            &alice,
            "s3:GetObject",
            "data",
            Resource::Object("x/y".into()),
        );
        assert!(d.allow, "{d:?}");
        // `reports/*` and `secret/*` split the bucket after the first byte.
        assert_eq!(d.scope, Scope::Prefix("x".into()));
        let d = check(
            &p,
            &alice,
            "s3:GetObject",
            "data",
            Resource::Object("secret/k".into()),
        );
        assert!(!d.allow);
        assert_eq!(d.reason, "denied by rule Deny:data/secret/*");
        let d = check(
            &p,
            &alice,
            "s3:DeleteObject",
            "other",
            Resource::Object("k".into()),
        );
        assert!(!d.allow);
        assert_eq!(d.scope, Scope::Bucket);
    }

    #[test]
    fn prefix_listing() {
        let p = sample();
        let bob = who("bob", &["analysts"]);
        let list = |prefix: &str| {
            check(
                &p,
                &bob,
                "s3:ListBucket",
                "data",
                Resource::Prefix(prefix.into()),
            )
            .allow
        };
        // the group rule names the bucket itself, so analysts may list it all
        assert!(list(""));
        let narrow = Policy::new(&[rule(
            Effect::Allow,
            &["bob"],
            &["s3:ListBucket", "s3:GetObject"],
            &["data/reports/*"],
        )]);
        let bob = who("bob", &[]);
        let list = |prefix: &str| {
            check(
                &narrow,
                &bob,
                "s3:ListBucket",
                "data",
                Resource::Prefix(prefix.into()),
            )
        };
        assert!(list("reports/").allow);
        assert!(list("reports/2024/").allow);
        assert!(!list("").allow);
        assert!(!list("rep").allow);
        assert_eq!(list("reports/").scope, Scope::Prefix("reports/".into()));
        assert_eq!(
            list("reports/2024/").scope,
            Scope::Prefix("reports/".into())
        );
        assert_eq!(list("rep").scope, Scope::Exact, "some `rep…` match");
        assert_eq!(list("x").scope, Scope::Prefix("x".into()));
        let head = check(&narrow, &bob, "s3:ListBucket", "data", Resource::Bucket);
        assert!(!head.allow, "a key glob does not grant the bucket itself");
    }

    #[test]
    fn anonymous_only_through_star() {
        let p = sample();
        let anon = Principal::anonymous();
        assert!(
            check(
                &p,
                &anon,
                "s3:GetObject",
                "public",
                Resource::Object("a".into())
            )
            .allow
        );
        assert!(
            !check(
                &p,
                &anon,
                "s3:GetObject",
                "data",
                Resource::Object("reports/a".into())
            )
            .allow
        );
        // a principal literally named like the anonymous marker never matches by name
        let odd = Policy::new(&[rule(Effect::Allow, &["*anonymous*"], &["s3:*"], &["*"])]);
        assert!(
            !check(
                &odd,
                &anon,
                "s3:GetObject",
                "data",
                Resource::Object("a".into())
            )
            .allow
        );
    }

    #[test]
    fn bucket_scope_when_keys_do_not_matter() {
        let p = Policy::new(&[rule(
            Effect::Allow,
            &["alice"],
            &["s3:GetObject"],
            &["data/*"],
        )]);
        let d = check(
            &p,
            &who("alice", &[]),
            "s3:GetObject",
            "data",
            Resource::Object("k".into()),
        );
        assert!(d.allow);
        assert_eq!(d.scope, Scope::Bucket);
    }

    /// The scope of alice's GetObject of `key` in bucket `data`, under
    /// allow rules on `allow` and deny rules on `deny`.
    fn scope_of(allow: &[&str], deny: &[&str], key: &str) -> Scope {
        let mut rules = vec![rule(Effect::Allow, &["alice"], &["s3:GetObject"], allow)];
        if !deny.is_empty() {
            rules.push(rule(Effect::Deny, &["*"], &["s3:*"], deny));
        }
        let alice = who("alice", &[]);
        let object = Resource::Object(key.into());
        check(&Policy::new(&rules), &alice, "s3:GetObject", "data", object).scope
    }

    #[test]
    fn prefix_scopes() {
        let prefix = |p: &str| Scope::Prefix(p.to_owned());
        // Inside a prefix glob: its literal.
        assert_eq!(scope_of(&["data/home/*"], &[], "home/a"), prefix("home/"));
        assert_eq!(scope_of(&["data/home/**"], &[], "home/a"), prefix("home/"));
        assert_eq!(scope_of(&["data/home/*"], &[], "home/"), prefix("home/"));
        // Outside: one byte past where the key leaves the literal.
        assert_eq!(scope_of(&["data/home/*"], &[], "hat"), prefix("ha"));
        assert_eq!(scope_of(&["data/home/*"], &[], "x"), prefix("x"));
        // A key that stops inside the literal: some extensions match.
        assert_eq!(scope_of(&["data/home/*"], &[], "hom"), Scope::Exact);
        assert_eq!(scope_of(&["data/home/*"], &[], ""), Scope::Exact);
        // Other globs: only keys that leave the literal are settled.
        assert_eq!(scope_of(&["data/a/*.csv"], &[], "a/x.csv"), Scope::Exact);
        assert_eq!(scope_of(&["data/a/*.csv"], &[], "b/x.csv"), prefix("b"));
        assert_eq!(scope_of(&["data/a/?"], &[], "a/x"), Scope::Exact);
        assert_eq!(scope_of(&["data/a/k"], &[], "a/k"), Scope::Exact);
        assert_eq!(scope_of(&["data/a/k"], &[], "a/j"), prefix("a/j"));
        assert_eq!(scope_of(&["data/*.csv"], &[], "x.csv"), Scope::Exact);
        // The longest requirement wins, deny and allow alike.
        assert_eq!(
            scope_of(
                &["data/home/*"],
                &["data/home/alice/private/*"],
                "home/alice/x"
            ),
            prefix("home/alice/x")
        );
        assert_eq!(
            scope_of(&["data/home/*"], &["data/home/bob/*"], "home/alice/x"),
            prefix("home/a")
        );
        assert_eq!(
            scope_of(&["data/home/*"], &["data/home/*/private"], "home/x"),
            Scope::Exact
        );
        // Rules on other buckets or for other principals do not count.
        assert_eq!(scope_of(&["data/*"], &["other/a/*"], "a/b"), Scope::Bucket);
    }

    #[test]
    fn prefix_scope_ends_on_a_char_boundary() {
        // The key leaves `è` inside its two bytes: the prefix takes all of `é`.
        assert_eq!(
            scope_of(&["data/è/*"], &[], "é/x"),
            Scope::Prefix("é".to_owned())
        );
        assert_eq!(
            scope_of(&["data/日本/*"], &[], "日本/x"),
            Scope::Prefix("日本/".to_owned())
        );
    }

    #[test]
    fn listing_bucket_itself_stays_bucket_scoped() {
        let p = Policy::new(&[rule(
            Effect::Allow,
            &["bob"],
            &["s3:ListBucket"],
            &["data", "data/reports/*"],
        )]);
        let d = check(
            &p,
            &who("bob", &[]),
            "s3:ListBucket",
            "data",
            Resource::Bucket,
        );
        assert!(d.allow);
        assert_eq!(d.scope, Scope::Bucket);
    }

    mod scope_property {
        use proptest::prelude::*;

        use super::*;

        /// Every string over the alphabet up to `max` characters.
        fn all_keys(max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|k| ["a", "b", "/"].map(|c| format!("{k}{c}")))
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }

        fn rule_strategy() -> impl Strategy<Value = RuleRecord> {
            let resource = prop_oneof![
                Just("data".to_owned()),
                Just("*".to_owned()),
                Just("other/*".to_owned()),
                "[ab/*?]{0,4}".prop_map(|g| format!("data/{g}")),
                "[ab/]{0,3}\\*".prop_map(|g| format!("data/{g}")),
            ];
            (
                any::<bool>(),
                prop::sample::select(vec!["s3:GetObject", "s3:*", "s3:PutObject"]),
                prop::collection::vec(resource, 1..3),
            )
                .prop_map(|(allow, action, resources)| {
                    let effect = if allow { Effect::Allow } else { Effect::Deny };
                    let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
                    rule(effect, &["alice"], &[action], &resources)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn the_answer_holds_over_its_scope(
                rules in prop::collection::vec(rule_strategy(), 1..4),
                key in "[ab/]{0,5}",
                listing in any::<bool>(),
            ) {
                let policy = Policy::new(&rules);
                let alice = who("alice", &[]);
                let resource = |k: &str| {
                    if listing {
                        Resource::Prefix(k.to_owned())
                    } else {
                        Resource::Object(k.to_owned())
                    }
                };
                let d = check(&policy, &alice, "s3:GetObject", "data", resource(&key));
                let prefix = match &d.scope {
                    Scope::Exact => return Ok(()),
                    Scope::Prefix(p) => p.clone(),
                    Scope::Bucket => String::new(),
                };
                prop_assert!(key.starts_with(&prefix), "{prefix:?} is not a prefix of {key:?}");
                for other in all_keys(6).iter().filter(|k| k.starts_with(&prefix)) {
                    let o = check(&policy, &alice, "s3:GetObject", "data", resource(other));
                    prop_assert_eq!(
                        (o.allow, &o.reason),
                        (d.allow, &d.reason),
                        "{:?} decided {:?} for {:?} but not for {:?}", rules, d.scope, key, other
                    );
                }
            }
        }
    }

    #[test]
    fn visible_buckets() {
        let p = sample();
        let names = ["data", "public", "other"];
        assert_eq!(
            p.visible(&who("alice", &[]), names.iter().copied()),
            vec!["data", "public"]
        );
        assert_eq!(
            p.visible(&Principal::anonymous(), names.iter().copied()),
            vec!["public"]
        );
    }
}
