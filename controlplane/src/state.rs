//! The control plane's state: access keys, rules, backends and buckets, with
//! a version that increases with every change.
//!
//! Every replica answers decisions from a local compiled snapshot of this
//! state ([`crate::Snapshot`]); a [`crate::store::Store`] holds the
//! authoritative copy (memory, or Redis shared by replicas) and tells every
//! replica what changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{AddressingStyleConfig, Effect, FileConfig, Secret};
use crate::credential::CredentialSpec;

pub use s3gate_proto::CorsRule;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub version: u64,
    pub keys: BTreeMap<String, KeyRecord>,
    /// By rule id. Order does not matter to decisions: deny wins.
    pub rules: BTreeMap<String, RuleRecord>,
    pub backends: BTreeMap<String, BackendRecord>,
    /// By name: exact names and patterns (`team-*`) alike.
    pub buckets: BTreeMap<String, BucketRecord>,
    /// The backend serving bucket names no entry matches; `None`: such
    /// names do not exist.
    pub default_backend: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub access_key: String,
    pub secret: Secret,
    pub principal: String,
    pub groups: Vec<String>,
    /// Unix seconds; 0 for keys seeded from a config file.
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    pub id: String,
    pub effect: Effect,
    pub principals: Vec<String>,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRecord {
    pub name: String,
    pub endpoint: String,
    pub region: String,
    pub addressing_style: AddressingStyleConfig,
    pub credentials: CredentialSpec,
    pub ca_bundle: Option<String>,
    pub insecure_skip_verify: bool,
    /// See `config::BackendConfig::key_segment_guard`.
    pub key_segment_guard: bool,
    /// Egress proxy (`proxy_credentials` is an `env:` reference).
    pub egress: s3gate_proto::Egress,
    pub limits: s3gate_proto::BackendLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRecord {
    /// An exact bucket name, or a glob (`*`, `?`) over client names.
    pub name: String,
    pub backend: String,
    /// The name at the backend: a template where `{name}` stands for the
    /// client's bucket name (always present in a pattern's).
    pub backend_bucket: String,
    /// CORS rules in order (the first that matches answers); empty: CORS is
    /// not enabled for the bucket.
    pub cors: Vec<CorsRule>,
    /// Where the bucket's backend credentials come from; `None`: its
    /// backend's record.
    pub credentials: Option<crate::credential::BucketCredentialSource>,
}

/// One atomic edit of the state.
/// Records hold plaintext secrets and deliberately do not implement
/// `Serialize`: a store defines its own (encrypted) stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
// One per admin change (rare): boxing the backend record saves nothing.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    PutKey(KeyRecord),
    DeleteKey(String),
    PutRule(RuleRecord),
    DeleteRule(String),
    PutBackend(BackendRecord),
    DeleteBackend(String),
    PutBucket(BucketRecord),
    DeleteBucket(String),
    /// `None`: off.
    SetDefaultBackend(Option<String>),
}

/// What a change touched, as told to every replica. Carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Touched {
    Key(String),
    Rules,
    Backend(String),
    Bucket(String),
    /// Temporary sessions were revoked (not a state change: the version
    /// stays). Replicas that do not know this variant reload everything.
    Sessions(Vec<String>),
    /// Several of the above at once: a reload of the config file that
    /// replaced the whole state ([`StateDiff`]).
    Several(Vec<Touched>),
    /// Anything, e.g. after a replica missed notifications.
    All,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

impl Change {
    pub fn touched(&self) -> Touched {
        match self {
            Change::PutKey(k) => Touched::Key(k.access_key.clone()),
            Change::DeleteKey(k) => Touched::Key(k.clone()),
            Change::PutRule(_) | Change::DeleteRule(_) => Touched::Rules,
            Change::PutBackend(b) => Touched::Backend(b.name.clone()),
            Change::DeleteBackend(b) => Touched::Backend(b.clone()),
            Change::PutBucket(b) => Touched::Bucket(b.name.clone()),
            Change::DeleteBucket(b) => Touched::Bucket(b.clone()),
            // Every name no entry matches: the glob that matches them all.
            Change::SetDefaultBackend(_) => Touched::Bucket("*".to_owned()),
        }
    }
}

impl State {
    /// Applies `change` if it keeps the state consistent (a bucket names an
    /// existing backend; a backend in use cannot be deleted). Does not touch
    /// the version: stores do.
    pub fn apply(&mut self, change: &Change) -> Result<(), ChangeError> {
        match change {
            Change::PutKey(k) => {
                validate_key_record(k)?;
                self.keys.insert(k.access_key.clone(), k.clone());
            }
            Change::DeleteKey(ak) => {
                self.keys
                    .remove(ak)
                    .ok_or_else(|| ChangeError::NotFound(format!("access key {ak:?}")))?;
            }
            Change::PutRule(r) => {
                validate_rule(r)?;
                self.rules.insert(r.id.clone(), r.clone());
            }
            Change::DeleteRule(id) => {
                self.rules
                    .remove(id)
                    .ok_or_else(|| ChangeError::NotFound(format!("rule {id:?}")))?;
            }
            Change::PutBackend(b) => {
                validate_backend(b)?;
                self.backends.insert(b.name.clone(), b.clone());
            }
            Change::DeleteBackend(name) => {
                if let Some(bucket) = self.buckets.values().find(|b| &b.backend == name) {
                    return Err(ChangeError::Invalid(format!(
                        "backend {name:?} is used by bucket {:?}",
                        bucket.name
                    )));
                }
                if self.default_backend.as_ref() == Some(name) {
                    return Err(ChangeError::Invalid(format!(
                        "backend {name:?} is the default backend"
                    )));
                }
                self.backends
                    .remove(name)
                    .ok_or_else(|| ChangeError::NotFound(format!("backend {name:?}")))?;
            }
            Change::PutBucket(b) => {
                check_placement(&b.name, &b.backend_bucket, self.buckets.values())
                    .map_err(|m| ChangeError::Invalid(format!("bucket {:?}: {m}", b.name)))?;
                if !self.backends.contains_key(&b.backend) {
                    return Err(ChangeError::Invalid(format!(
                        "bucket {:?} names unknown backend {:?}",
                        b.name, b.backend
                    )));
                }
                validate_cors(&b.cors)
                    .map_err(|m| ChangeError::Invalid(format!("bucket {:?}: {m}", b.name)))?;
                if let Some(c) = &b.credentials {
                    c.validate().map_err(|m| {
                        ChangeError::Invalid(format!("bucket {:?}: credentials: {m}", b.name))
                    })?;
                }
                self.buckets.insert(b.name.clone(), b.clone());
            }
            Change::DeleteBucket(name) => {
                self.buckets
                    .remove(name)
                    .ok_or_else(|| ChangeError::NotFound(format!("bucket {name:?}")))?;
            }
            Change::SetDefaultBackend(backend) => {
                if let Some(name) = backend {
                    if !self.backends.contains_key(name) {
                        return Err(ChangeError::Invalid(format!(
                            "default backend {name:?} is not a backend"
                        )));
                    }
                }
                self.default_backend = backend.clone();
            }
        }
        Ok(())
    }

    /// [`State::from_config`], checked as a whole as the Admin API checks
    /// each change (every record valid, every bucket naming a backend, no
    /// overlapping patterns, a default backend that exists): what a reload
    /// swaps in. The file's own validation already placed its problems by
    /// line; this is the second line of defence.
    pub fn from_config_checked(cfg: &FileConfig) -> Result<Self, ChangeError> {
        let seed = Self::from_config(cfg);
        let mut state = State::default();
        let changes = seed
            .backends
            .into_values()
            .map(Change::PutBackend)
            .chain(seed.buckets.into_values().map(Change::PutBucket))
            .chain(seed.keys.into_values().map(Change::PutKey))
            .chain(seed.rules.into_values().map(Change::PutRule))
            .chain(std::iter::once(Change::SetDefaultBackend(
                seed.default_backend,
            )));
        for change in changes {
            state.apply(&change)?;
        }
        Ok(state)
    }

    /// The state a config file describes. Rules get ids `r001`, `r002`, …
    /// in file order.
    pub fn from_config(cfg: &FileConfig) -> Self {
        let keys = cfg
            .keys
            .iter()
            .map(|k| {
                (
                    k.access_key.clone(),
                    KeyRecord {
                        access_key: k.access_key.clone(),
                        secret: k.secret_key.clone(),
                        principal: k.principal.clone(),
                        groups: k.groups.clone(),
                        created: 0,
                    },
                )
            })
            .collect();
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let id = format!("r{:03}", i + 1);
                (
                    id.clone(),
                    RuleRecord {
                        id,
                        effect: r.effect,
                        principals: r.principals.clone(),
                        actions: r.actions.clone(),
                        resources: r.resources.clone(),
                    },
                )
            })
            .collect();
        let backends = cfg
            .backends
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    BackendRecord {
                        name: b.name.clone(),
                        endpoint: b.endpoint.clone(),
                        region: b.region.clone(),
                        addressing_style: b.addressing_style,
                        credentials: b.credentials.clone(),
                        ca_bundle: b.ca_bundle.clone(),
                        insecure_skip_verify: b.insecure_skip_verify,
                        key_segment_guard: b.key_segment_guard,
                        egress: b.egress.clone(),
                        limits: b.limits,
                    },
                )
            })
            .collect();
        let buckets = cfg
            .buckets
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    BucketRecord {
                        name: b.name.clone(),
                        backend: b.backend.clone(),
                        backend_bucket: default_backend_bucket(
                            &b.name,
                            b.backend_bucket.as_deref(),
                        ),
                        cors: b.cors.iter().map(|r| r.to_rule()).collect(),
                        credentials: b.credentials.clone(),
                    },
                )
            })
            .collect();
        State {
            version: 0,
            keys,
            rules,
            backends,
            buckets,
            default_backend: cfg.default_backend.clone(),
        }
    }
}

/// How the entries of one kind differ between two states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: u32,
    pub removed: u32,
    pub changed: u32,
}

impl Counts {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "+{} -{} ~{}", self.added, self.removed, self.changed)
    }
}

/// What differs between two states: how many entries of each kind were
/// added, removed or changed (names and secrets stay out), and what every
/// replica must be told ([`Touched`]) for data planes to forget exactly the
/// entries that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDiff {
    pub keys: Counts,
    /// Rules compared by what they say, not by id: file rules are numbered
    /// in order, so one inserted rule would otherwise renumber the rest.
    /// Never `changed`: an edited rule is one removed and one added.
    pub rules: Counts,
    pub backends: Counts,
    pub buckets: Counts,
    pub default_backend: bool,
    pub touched: Vec<Touched>,
}

impl StateDiff {
    pub fn between(old: &State, new: &State) -> Self {
        let mut touched = Vec::new();
        let keys = diff_maps(&old.keys, &new.keys, |ak| {
            touched.push(Touched::Key(ak.to_owned()));
        });
        let rules = diff_rules(old, new);
        if !rules.is_zero() {
            touched.push(Touched::Rules);
        }
        // A removed backend serves no bucket any more: the buckets that
        // named it were removed or changed, and are touched as such.
        let mut changed_backends = Vec::new();
        let backends = diff_maps(&old.backends, &new.backends, |name| {
            if old.backends.contains_key(name) && new.backends.contains_key(name) {
                changed_backends.push(name.to_owned());
            }
        });
        touched.extend(changed_backends.into_iter().map(Touched::Backend));
        let buckets = diff_maps(&old.buckets, &new.buckets, |name| {
            touched.push(Touched::Bucket(name.to_owned()));
        });
        let default_backend = old.default_backend != new.default_backend;
        if default_backend {
            touched.push(Touched::Bucket("*".to_owned()));
        }
        Self {
            keys,
            rules,
            backends,
            buckets,
            default_backend,
            touched,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }

    /// The one notification for the whole difference (`None`: none).
    pub fn notification(&self) -> Option<Touched> {
        match self.touched.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            many => Some(Touched::Several(many.to_vec())),
        }
    }
}

/// Counts the entries added, removed and changed from `old` to `new`,
/// calling `touch` with the name of each.
fn diff_maps<V: PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    mut touch: impl FnMut(&str),
) -> Counts {
    let mut counts = Counts::default();
    for (name, value) in old {
        match new.get(name) {
            None => {
                counts.removed += 1;
                touch(name);
            }
            Some(v) if v != value => {
                counts.changed += 1;
                touch(name);
            }
            Some(_) => {}
        }
    }
    for name in new.keys().filter(|name| !old.contains_key(*name)) {
        counts.added += 1;
        touch(name);
    }
    counts
}

/// Rules as multisets of what they say (effect, principals, actions,
/// resources), ids aside.
fn diff_rules(old: &State, new: &State) -> Counts {
    type Said<'a> = (Effect, &'a [String], &'a [String], &'a [String]);
    let said = |s: &'_ State| -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in s.rules.values() {
            let key: Said<'_> = (r.effect, &r.principals, &r.actions, &r.resources);
            *out.entry(format!("{key:?}")).or_insert(0) += 1;
        }
        out
    };
    let (old, new) = (said(old), said(new));
    let count = |a: &BTreeMap<String, usize>, b: &BTreeMap<String, usize>| -> u32 {
        a.iter()
            .map(|(k, n)| n.saturating_sub(b.get(k).copied().unwrap_or(0)))
            .sum::<usize>()
            .try_into()
            .unwrap_or(u32::MAX)
    };
    Counts {
        added: count(&new, &old),
        removed: count(&old, &new),
        changed: 0,
    }
}

/// A bucket entry's `backend_bucket` when none is given: the client's name
/// (for a pattern, as the template `{name}`).
pub fn default_backend_bucket(name: &str, given: Option<&str>) -> String {
    match given {
        Some(bb) => bb.to_owned(),
        None if s3gate_proto::buckets::is_pattern(name) => s3gate_proto::buckets::NAME.to_owned(),
        None => name.to_owned(),
    }
}

/// An entry's name and template, and (for a pattern) that it overlaps no
/// other entry's pattern.
pub(crate) fn check_placement<'a>(
    name: &str,
    backend_bucket: &str,
    others: impl Iterator<Item = &'a BucketRecord>,
) -> Result<(), String> {
    use s3gate_proto::buckets::{globs_overlap, is_pattern, valid_entry_name, Template};
    valid_entry_name(name)?;
    let template = Template::parse(Some(backend_bucket))?;
    if is_pattern(name) {
        if !template.has_name() {
            return Err(format!(
                "pattern {name:?}: backend_bucket {backend_bucket:?} must contain {{name}} (otherwise every matching bucket would be the same backend bucket)"
            ));
        }
        for other in others {
            if other.name != name && is_pattern(&other.name) && globs_overlap(&other.name, name) {
                return Err(format!(
                    "pattern {name:?} overlaps pattern {:?} (some bucket name matches both)",
                    other.name
                ));
            }
        }
    }
    Ok(())
}

// The checks a record must pass, shared with the config file's validation
// (which says where in the file a value fails).

pub(crate) fn valid_access_key(ak: &str) -> bool {
    !ak.is_empty() && ak.bytes().all(|c| c.is_ascii_graphic() && c != b'/')
}

pub(crate) fn valid_principal(p: &str) -> bool {
    !p.is_empty() && p != s3gate_proto::Principal::ANONYMOUS
}

/// `http(s)://host[:port]`, without a path (not even `/`).
pub(crate) fn valid_endpoint(endpoint: &str) -> bool {
    endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .is_some_and(|authority| !authority.is_empty() && !authority.contains('/'))
}

/// `bucket` or `bucket/key-glob`.
pub(crate) fn valid_resource(res: &str) -> bool {
    !res.is_empty() && !res.starts_with('/')
}

/// The methods a CORS rule may allow: S3's list.
pub(crate) const CORS_METHODS: &[&str] = &["GET", "PUT", "HEAD", "POST", "DELETE"];

/// At most S3's number of CORS rules per bucket.
pub(crate) const MAX_CORS_RULES: usize = 100;

/// A bucket's CORS rules, as S3 checks a `CORSConfiguration`: every rule
/// names at least one origin and one method; methods are S3's; an origin or
/// an allowed header holds at most one `*`; exposed headers are plain
/// header names. The message starts with the failing rule (`cors[1]: …`).
pub(crate) fn validate_cors(rules: &[CorsRule]) -> Result<(), String> {
    if rules.len() > MAX_CORS_RULES {
        return Err(format!(
            "cors: {} rules, at most {MAX_CORS_RULES} are allowed",
            rules.len()
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        validate_cors_rule(r).map_err(|m| format!("cors[{i}]: {m}"))?;
    }
    Ok(())
}

fn validate_cors_rule(r: &CorsRule) -> Result<(), String> {
    if r.allowed_origins.is_empty() {
        return Err("allowed_origins must not be empty (\"*\" allows every origin)".into());
    }
    for o in &r.allowed_origins {
        if o.is_empty() || !o.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "allowed origin {o:?} must be printable ASCII without spaces"
            ));
        }
        if o.matches('*').count() > 1 {
            return Err(format!(
                "allowed origin {o:?} can have at most one * wildcard"
            ));
        }
    }
    if r.allowed_methods.is_empty() {
        return Err("allowed_methods must not be empty".into());
    }
    for m in &r.allowed_methods {
        if !CORS_METHODS.contains(&m.as_str()) {
            return Err(format!(
                "unknown method {m:?} in allowed_methods (one of {})",
                CORS_METHODS.join(", ")
            ));
        }
    }
    for h in &r.allowed_headers {
        if h.is_empty() || !h.bytes().all(|c| c == b'*' || is_token_char(c)) {
            return Err(format!("allowed header {h:?} is not a header name"));
        }
        if h.matches('*').count() > 1 {
            return Err(format!(
                "allowed header {h:?} can have at most one * wildcard"
            ));
        }
    }
    for h in &r.expose_headers {
        if h.contains('*') {
            return Err(format!(
                "expose header {h:?}: wildcards are not supported in expose_headers"
            ));
        }
        if h.is_empty() || !h.bytes().all(is_token_char) {
            return Err(format!("expose header {h:?} is not a header name"));
        }
    }
    Ok(())
}

/// A character of an HTTP header name (RFC 9110 `tchar`).
fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&c)
}

fn validate_key_record(k: &KeyRecord) -> Result<(), ChangeError> {
    if !valid_access_key(&k.access_key) {
        return Err(ChangeError::Invalid(
            "access key must be printable ASCII without '/'".into(),
        ));
    }
    if k.secret.expose().is_empty() {
        return Err(ChangeError::Invalid("secret must not be empty".into()));
    }
    if !valid_principal(&k.principal) {
        return Err(ChangeError::Invalid("invalid principal".into()));
    }
    Ok(())
}

fn validate_rule(r: &RuleRecord) -> Result<(), ChangeError> {
    let invalid = |m: String| Err(ChangeError::Invalid(format!("rule {:?}: {m}", r.id)));
    if r.id.is_empty() {
        return invalid("id must not be empty".into());
    }
    if r.principals.is_empty() || r.actions.is_empty() || r.resources.is_empty() {
        return invalid("principals, actions and resources must not be empty".into());
    }
    for a in &r.actions {
        crate::policy::check_action(a).or_else(invalid)?;
    }
    if let Some(res) = r.resources.iter().find(|res| !valid_resource(res)) {
        return invalid(format!(
            "resource {res:?} must be 'bucket' or 'bucket/key-glob'"
        ));
    }
    Ok(())
}

fn validate_backend(b: &BackendRecord) -> Result<(), ChangeError> {
    b.credentials
        .validate()
        .map_err(|m| ChangeError::Invalid(format!("backend {:?}: {m}", b.name)))?;
    let secrets = b.credentials.try_map(|field, s| {
        if s.expose().is_empty() {
            Err(ChangeError::Invalid(format!(
                "backend {:?}: {field} is empty",
                b.name
            )))
        } else {
            Ok(())
        }
    });
    secrets?;
    b.egress
        .validate()
        .and_then(|()| b.limits.validate())
        .map_err(|m| ChangeError::Invalid(format!("backend {:?}: {m}", b.name)))?;
    if valid_endpoint(&b.endpoint) {
        Ok(())
    } else {
        Err(ChangeError::Invalid(format!(
            "backend {:?}: endpoint must be http(s)://host[:port] without a path",
            b.name
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn backend(name: &str) -> BackendRecord {
        BackendRecord {
            name: name.into(),
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            addressing_style: AddressingStyleConfig::Path,
            credentials: CredentialSpec::StaticHmac {
                access_key: "AK".into(),
                secret_key: Secret::new("s"),
                session_token: None,
            },
            ca_bundle: None,
            insecure_skip_verify: false,
            key_segment_guard: true,
            egress: Default::default(),
            limits: Default::default(),
        }
    }

    fn diff(old: &State, new: &State) -> (Vec<Counts>, bool, Vec<Touched>) {
        let d = StateDiff::between(old, new);
        (
            vec![d.keys, d.rules, d.backends, d.buckets],
            d.default_backend,
            d.touched,
        )
    }

    #[test]
    fn a_diff_counts_and_touches_exactly_what_changed() {
        let key = |ak: &str, principal: &str| KeyRecord {
            access_key: ak.into(),
            secret: Secret::new("s"),
            principal: principal.into(),
            groups: vec![],
            created: 0,
        };
        let rule = |id: &str, resource: &str| RuleRecord {
            id: id.into(),
            effect: Effect::Allow,
            principals: vec!["*".into()],
            actions: vec!["s3:GetObject".into()],
            resources: vec![resource.into()],
        };
        let bucket = |name: &str, backend: &str| BucketRecord {
            name: name.into(),
            backend: backend.into(),
            backend_bucket: name.into(),
            cors: vec![],
            credentials: None,
        };
        let mut old = State::default();
        for c in [
            Change::PutBackend(backend("b1")),
            Change::PutBackend(backend("b2")),
            Change::PutBucket(bucket("kept", "b1")),
            Change::PutBucket(bucket("moved", "b1")),
            Change::PutBucket(bucket("gone", "b2")),
            Change::PutKey(key("AK1", "alice")),
            Change::PutKey(key("AK2", "bob")),
            Change::PutRule(rule("r001", "kept/*")),
            Change::PutRule(rule("r002", "gone/*")),
        ] {
            old.apply(&c).unwrap();
        }
        // The same state with other version and rule ids: no difference.
        let mut same = old.clone();
        same.version = 9;
        let r = same.rules.remove("r001").unwrap();
        same.rules.insert(
            "x".into(),
            RuleRecord {
                id: "x".into(),
                ..r
            },
        );
        assert_eq!(
            diff(&old, &same),
            (vec![Counts::default(); 4], false, vec![])
        );
        assert_eq!(StateDiff::between(&old, &same).notification(), None);

        let mut new = old.clone();
        let mut b2 = backend("b2");
        b2.endpoint = "http://127.0.0.1:9001".into();
        for c in [
            Change::DeleteBucket("gone".into()),
            Change::PutBucket(bucket("moved", "b2")),
            Change::PutBucket(bucket("new", "b1")),
            Change::PutBackend(backend("b3")),
            Change::PutBackend(b2),
            Change::DeleteKey("AK2".into()),
            Change::PutKey(key("AK1", "carol")),
            Change::PutKey(key("AK3", "dave")),
            Change::DeleteRule("r002".into()),
            Change::PutRule(rule("r003", "new/*")),
            Change::PutRule(rule("r004", "new/*")),
            Change::SetDefaultBackend(Some("b1".into())),
        ] {
            new.apply(&c).unwrap();
        }
        let (counts, default_backend, touched) = diff(&old, &new);
        let c = |added, removed, changed| Counts {
            added,
            removed,
            changed,
        };
        assert_eq!(
            counts,
            [c(1, 1, 1), c(2, 1, 0), c(1, 0, 1), c(1, 1, 1)],
            "keys, rules, backends, buckets"
        );
        assert!(default_backend);
        assert_eq!(
            touched,
            [
                Touched::Key("AK1".into()),
                Touched::Key("AK2".into()),
                Touched::Key("AK3".into()),
                Touched::Rules,
                Touched::Backend("b2".into()),
                Touched::Bucket("gone".into()),
                Touched::Bucket("moved".into()),
                Touched::Bucket("new".into()),
                Touched::Bucket("*".into()),
            ]
        );
        assert!(matches!(
            StateDiff::between(&old, &new).notification(),
            Some(Touched::Several(all)) if all.len() == 9
        ));
    }

    #[test]
    fn a_config_state_is_checked_as_a_whole() {
        let cfg = FileConfig::parse(
            "default_backend = \"b\"\n\
             [[backends]]\nname = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\naccess_key = \"A\"\nsecret_key = \"s\"\n\
             [[buckets]]\nname = \"data\"\nbackend = \"b\"\n\
             [[keys]]\naccess_key = \"AK\"\nsecret_key = \"k\"\nprincipal = \"alice\"\n\
             [[rules]]\neffect = \"allow\"\nprincipals = [\"alice\"]\nactions = [\"s3:*\"]\nresources = [\"data\"]\n",
        )
        .unwrap();
        let checked = State::from_config_checked(&cfg).unwrap();
        assert_eq!(checked, State::from_config(&cfg));
        // What the file's own validation would refuse, made after it.
        let mut bad = cfg.clone();
        bad.buckets[0].backend = "nope".into();
        let err = State::from_config_checked(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown backend \"nope\""), "{err}");
        let mut bad = cfg;
        bad.default_backend = Some("nope".into());
        assert!(State::from_config_checked(&bad).is_err());
    }

    #[test]
    fn referential_integrity() {
        let mut s = State::default();
        let bucket = BucketRecord {
            name: "data".into(),
            backend: "b1".into(),
            backend_bucket: "data".into(),
            cors: Vec::new(),
            credentials: None,
        };
        assert!(
            s.apply(&Change::PutBucket(bucket.clone())).is_err(),
            "unknown backend"
        );
        s.apply(&Change::PutBackend(backend("b1"))).unwrap();
        s.apply(&Change::PutBucket(bucket)).unwrap();
        assert!(matches!(
            s.apply(&Change::DeleteBackend("b1".into())),
            Err(ChangeError::Invalid(_))
        ));
        s.apply(&Change::DeleteBucket("data".into())).unwrap();
        s.apply(&Change::DeleteBackend("b1".into())).unwrap();
        assert!(matches!(
            s.apply(&Change::DeleteKey("nope".into())),
            Err(ChangeError::NotFound(_))
        ));
    }

    #[test]
    fn patterns_and_the_default_backend() {
        let mut s = State::default();
        s.apply(&Change::PutBackend(backend("b1"))).unwrap();
        let entry = |name: &str, backend_bucket: &str| {
            Change::PutBucket(BucketRecord {
                name: name.into(),
                backend: "b1".into(),
                backend_bucket: backend_bucket.into(),
                cors: Vec::new(),
                credentials: None,
            })
        };
        s.apply(&entry("team-*", "prod-{name}")).unwrap();
        // Replacing the same pattern is no overlap with itself.
        s.apply(&entry("team-*", "{name}")).unwrap();
        let e = s.apply(&entry("t*-x", "{name}")).unwrap_err();
        assert_eq!(
            e,
            ChangeError::Invalid(
                "bucket \"t*-x\": pattern \"t*-x\" overlaps pattern \"team-*\" (some bucket name matches both)".into()
            )
        );
        assert!(s.apply(&entry("lab-*", "fixed")).is_err());
        assert!(s.apply(&entry("lab-*", "a/{name}")).is_err());
        s.apply(&entry("team-x", "anything")).unwrap();
        assert!(s
            .apply(&Change::SetDefaultBackend(Some("nope".into())))
            .is_err());
        s.apply(&Change::SetDefaultBackend(Some("b1".into())))
            .unwrap();
        assert_eq!(
            Change::SetDefaultBackend(None).touched(),
            Touched::Bucket("*".into())
        );
        s.apply(&Change::DeleteBucket("team-*".into())).unwrap();
        s.apply(&Change::DeleteBucket("team-x".into())).unwrap();
        let e = s.apply(&Change::DeleteBackend("b1".into())).unwrap_err();
        assert!(e.to_string().contains("default backend"), "{e}");
        s.apply(&Change::SetDefaultBackend(None)).unwrap();
        s.apply(&Change::DeleteBackend("b1".into())).unwrap();
    }

    #[test]
    fn rules_name_known_actions_only() {
        let rule = |actions: &[&str]| {
            Change::PutRule(RuleRecord {
                id: "r".into(),
                effect: Effect::Allow,
                principals: vec!["bob".into()],
                actions: actions.iter().map(|a| a.to_string()).collect(),
                resources: vec!["data/*".into()],
            })
        };
        let mut s = State::default();
        for ok in [&["s3:GetObject"][..], &["s3:Get*", "s3:*"], &["*"]] {
            s.apply(&rule(ok)).unwrap();
        }
        assert_eq!(
            s.apply(&rule(&["s3:GetObject", "s3:GetObjekt"])),
            Err(ChangeError::Invalid(
                "rule \"r\": action \"s3:GetObjekt\" is not an S3 action s3gate authorizes \
                 (did you mean \"s3:GetObject\"?)"
                    .into()
            ))
        );
        assert_eq!(
            s.apply(&rule(&["iam:*"])),
            Err(ChangeError::Invalid(
                "rule \"r\": action pattern \"iam:*\" matches no S3 action s3gate authorizes"
                    .into()
            ))
        );
    }

    #[test]
    fn cors_rules_are_checked_as_s3_checks_them() {
        let rule = |origins: &[&str], methods: &[&str]| CorsRule {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            allowed_methods: methods.iter().map(|m| m.to_string()).collect(),
            ..CorsRule::default()
        };
        let ok = rule(
            &["https://app.example.com", "https://*.example.org", "*"],
            &["GET", "PUT", "HEAD", "POST", "DELETE"],
        );
        assert_eq!(validate_cors(std::slice::from_ref(&ok)), Ok(()));
        let check = |r: CorsRule| validate_cors(&[ok.clone(), r]).unwrap_err();
        assert_eq!(
            check(rule(&["*"], &["PATCH"])),
            "cors[1]: unknown method \"PATCH\" in allowed_methods (one of GET, PUT, HEAD, POST, DELETE)"
        );
        assert_eq!(
            check(rule(&["*"], &["get"])).split(':').next(),
            Some("cors[1]")
        );
        assert!(check(rule(&[], &["GET"])).contains("allowed_origins must not be empty"));
        assert!(check(rule(&["*"], &[])).contains("allowed_methods must not be empty"));
        assert!(
            check(rule(&["https://*.*.example.org"], &["GET"])).contains("at most one * wildcard")
        );
        assert!(check(rule(&["https://a b"], &["GET"])).contains("without spaces"));
        let mut h = rule(&["*"], &["GET"]);
        h.allowed_headers = vec!["x-amz-*-*".into()];
        assert!(check(h).contains("at most one * wildcard"));
        let mut e = rule(&["*"], &["GET"]);
        e.expose_headers = vec!["*".into()];
        assert!(check(e).contains("wildcards are not supported"));
        let mut e = rule(&["*"], &["GET"]);
        e.expose_headers = vec!["ETag, x".into()];
        assert!(check(e).contains("is not a header name"));
        assert!(validate_cors(&vec![ok; MAX_CORS_RULES + 1]).is_err());

        // The same checks guard the Admin API's changes.
        let mut s = State::default();
        s.apply(&Change::PutBackend(backend("b1"))).unwrap();
        let bucket = BucketRecord {
            name: "web".into(),
            backend: "b1".into(),
            backend_bucket: "web".into(),
            cors: vec![rule(&["*"], &["PATCH"])],
            credentials: None,
        };
        assert!(matches!(
            s.apply(&Change::PutBucket(bucket)),
            Err(ChangeError::Invalid(m)) if m.starts_with("bucket \"web\": cors[0]: unknown method")
        ));
    }

    #[test]
    fn serialized_changes_keep_secrets_out_of_debug() {
        let change = Change::PutKey(KeyRecord {
            access_key: "AK".into(),
            secret: Secret::new("top-secret-value"),
            principal: "p".into(),
            groups: vec![],
            created: 1,
        });
        assert!(!format!("{change:?}").contains("top-secret-value"));
        assert_eq!(change.touched(), Touched::Key("AK".into()));
    }
}
