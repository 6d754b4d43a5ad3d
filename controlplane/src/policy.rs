//! Built-in rules: principal/group × action × bucket/key-glob, allow or deny.
//!
//! Evaluation looks at every rule; an explicit deny beats any allow, and no
//! matching allow means deny. Each decision names the rule that decided and
//! the widest scope over which the same answer holds, so the data plane can
//! cache it for every request it covers.

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
        // Whether every rule that could apply to some key of this bucket
        // gives the same answer for all keys: then the decision holds for the
        // whole bucket.
        let mut key_independent = true;
        for rule in &self.rules {
            if !rule.applies_to(&req.principal, &req.action) {
                continue;
            }
            for pattern in &rule.resources {
                if !pattern.bucket.matches(&req.bucket) {
                    continue;
                }
                if !pattern.is_key_independent(&req.resource) {
                    key_independent = false;
                }
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
        let scope = if key_independent {
            Scope::Bucket
        } else {
            Scope::Exact
        };
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

    /// Whether `matches` gives the same answer for every key of this kind.
    fn is_key_independent(&self, resource: &Resource) -> bool {
        match (resource, &self.key) {
            (Resource::Bucket, _) => true,
            (Resource::Object(_), None) => true,
            (Resource::Prefix(_), None) => true,
            (Resource::Object(_) | Resource::Prefix(_), Some(g)) => g.matches_all,
        }
    }
}

impl Glob {
    fn new(pattern: &str) -> Self {
        Self {
            matcher: WildMatch::new(pattern),
            matches_all: !pattern.is_empty() && pattern.bytes().all(|b| b == b'*'),
        }
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
        assert_eq!(d.scope, Scope::Exact, "a deny glob makes keys matter");
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
        assert_eq!(list("reports/").scope, Scope::Exact);
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
