//! Policy sources and the chain that combines them.
//!
//! Each source answers allow, deny or abstain, with a reason, the scope over
//! which its answer holds and how long it may be cached. The chain asks the
//! sources in order: an explicit deny from any of them is final; otherwise
//! an allow from any of them allows; if all abstain, the request is denied.
//! A source that fails makes the chain fail (fail closed) unless a source
//! before it already denied.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{AuthorizeRequest, Decision, Scope};

use super::SourceError;
use crate::policy::Policy;
use crate::state::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    Allow,
    Deny,
    /// Nothing in this source speaks to the request.
    Abstain,
}

/// One source's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// Why, in words an operator can act on (shown by Explain, logged).
    pub reason: String,
    /// What decided, for Explain (a rule id, a policy path…).
    pub by: Option<String>,
    /// Over which requests the same answer holds (abstentions too: an
    /// abstention that varies per key narrows the combined decision).
    pub scope: Scope,
    pub ttl: Duration,
}

/// What a source outside the gateway (Rego, OPA, SQL, a plugin) answered,
/// before it becomes a [`Verdict`]: every such source maps its own answer
/// shape onto this, so that all of them are cached alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub kind: VerdictKind,
    pub reason: Option<String>,
    /// How long the answer may be cached; `None`: the `[cache]`
    /// `decision_ttl`. Never longer than that.
    pub ttl_s: Option<u64>,
    /// The answer holds for every key starting with this; `None`: for this
    /// exact request only.
    pub scope_prefix: Option<String>,
}

impl Answer {
    /// The verdict of `source` (its name, for the reason and Explain) on
    /// `req`, cached at most `max_ttl`. A scope is never wider than the
    /// source said: no prefix, or a prefix the request's key does not start
    /// with, holds for the exact request only; a bucket-level request is
    /// always exact.
    pub fn into_verdict(self, source: &str, req: &AuthorizeRequest, max_ttl: Duration) -> Verdict {
        let scope = match (self.scope_prefix, req.resource.key()) {
            (Some(prefix), Some(key)) if key.starts_with(prefix.as_str()) => Scope::Prefix(prefix),
            _ => Scope::Exact,
        };
        let ttl = self
            .ttl_s
            .map_or(max_ttl, |s| Duration::from_secs(s).min(max_ttl));
        let reason = self.reason.unwrap_or_else(|| match self.kind {
            VerdictKind::Allow => format!("allowed by {source}"),
            VerdictKind::Deny => format!("denied by {source}"),
            VerdictKind::Abstain => format!("{source} does not allow it"),
        });
        Verdict {
            kind: self.kind,
            reason,
            by: Some(source.to_owned()),
            scope,
            ttl,
        }
    }
}

#[async_trait]
pub trait PolicySource: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    async fn decide(&self, req: &AuthorizeRequest) -> Result<Verdict, SourceError>;
}

/// Policy sources in order; see the module docs for how they combine.
pub struct PolicyChain {
    sources: Vec<Arc<dyn PolicySource>>,
}

impl PolicyChain {
    pub fn new(sources: Vec<Arc<dyn PolicySource>>) -> Self {
        Self { sources }
    }

    /// The combined decision.
    pub async fn decide(&self, req: &AuthorizeRequest) -> Result<Decision, SourceError> {
        Ok(self.explain(req).await?.0)
    }

    /// The combined decision and what decided it (`None`: nothing allowed).
    pub async fn explain(
        &self,
        req: &AuthorizeRequest,
    ) -> Result<(Decision, Option<String>), SourceError> {
        let mut fold = Fold::default();
        for source in &self.sources {
            let verdict = source.decide(req).await?;
            // A deny is final: later sources cannot allow it, and their
            // failures cannot make it fail.
            if let Some((decision, by)) = fold.add(source.name(), verdict) {
                return Ok((decision, by));
            }
        }
        let (decision, by, _) = fold.finish();
        Ok((decision, by))
    }

    /// Every source's answer (each one is asked, even after a deny), and
    /// the combined outcome exactly as [`PolicyChain::decide`] reaches it.
    pub async fn explain_sources(&self, req: &AuthorizeRequest) -> Explanation {
        let mut answers = Vec::with_capacity(self.sources.len());
        for source in &self.sources {
            answers.push(SourceAnswer {
                source: source.name(),
                verdict: source.decide(req).await,
            });
        }
        let mut fold = Fold::default();
        let mut outcome = None;
        for a in &answers {
            match &a.verdict {
                Err(e) => {
                    outcome = Some(Err((a.source, e.clone())));
                    break;
                }
                Ok(v) => {
                    if let Some((decision, by)) = fold.add(a.source, v.clone()) {
                        outcome = Some(Ok((decision, by, Some(a.source))));
                        break;
                    }
                }
            }
        }
        let outcome = outcome.unwrap_or_else(|| Ok(fold.finish()));
        Explanation { answers, outcome }
    }
}

/// One source's answer, for Explain.
#[derive(Debug, Clone)]
pub struct SourceAnswer {
    pub source: &'static str,
    pub verdict: Result<Verdict, SourceError>,
}

/// What [`PolicyChain::explain_sources`] found.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// In chain order.
    pub answers: Vec<SourceAnswer>,
    /// The decision, what inside the deciding source decided it (a rule
    /// id, a query) and which source decided (`None`: nothing allowed); or
    /// the source that could not answer (the data plane answers 503).
    #[allow(clippy::type_complexity)]
    pub outcome:
        Result<(Decision, Option<String>, Option<&'static str>), (&'static str, SourceError)>,
}

/// The chain's combination rule, one verdict at a time.
struct Fold {
    /// The first allow, and which source gave it.
    allow: Option<(Verdict, &'static str)>,
    abstain: Option<Verdict>,
    scope: Scope,
    ttl: Duration,
}

impl Default for Fold {
    fn default() -> Self {
        Self {
            allow: None,
            abstain: None,
            scope: Scope::Bucket,
            ttl: Duration::MAX,
        }
    }
}

impl Fold {
    /// Takes one source's verdict; a deny is final and returned at once.
    fn add(
        &mut self,
        source: &'static str,
        verdict: Verdict,
    ) -> Option<(Decision, Option<String>)> {
        self.scope = narrower(
            std::mem::replace(&mut self.scope, Scope::Exact),
            verdict.scope.clone(),
        );
        self.ttl = self.ttl.min(verdict.ttl);
        match verdict.kind {
            VerdictKind::Deny => {
                let decision = Decision {
                    allow: false,
                    reason: verdict.reason,
                    scope: verdict.scope,
                    ttl: verdict.ttl,
                    decided_by: Some(decided_by(source, verdict.by.as_deref())),
                };
                return Some((decision, verdict.by));
            }
            VerdictKind::Allow => {
                self.allow.get_or_insert((verdict, source));
            }
            VerdictKind::Abstain => {
                self.abstain.get_or_insert(verdict);
            }
        }
        None
    }

    /// The decision when no source denied.
    fn finish(self) -> (Decision, Option<String>, Option<&'static str>) {
        let (allowed, reason, by, source) = match (self.allow, self.abstain) {
            (Some((v, source)), _) => (true, v.reason, v.by, Some(source)),
            (None, Some(v)) => (false, v.reason, None, None),
            (None, None) => (
                false,
                "no policy source is configured".to_owned(),
                None,
                None,
            ),
        };
        let ttl = if self.ttl == Duration::MAX {
            Duration::ZERO
        } else {
            self.ttl
        };
        (
            Decision {
                allow: allowed,
                reason,
                scope: self.scope,
                ttl,
                decided_by: source.map(|s| decided_by(s, by.as_deref())),
            },
            by,
            source,
        )
    }
}

/// `source:rule` (or the source alone), as the audit log names a decision's maker.
fn decided_by(source: &str, by: Option<&str>) -> Arc<str> {
    match by {
        Some(by) => format!("{source}:{by}").into(),
        None => source.into(),
    }
}

/// The narrower of two scopes: an answer holds only where both hold.
fn narrower(a: Scope, b: Scope) -> Scope {
    fn width(s: &Scope) -> u8 {
        match s {
            Scope::Exact => 0,
            Scope::Prefix(_) => 1,
            Scope::Bucket => 2,
        }
    }
    match (&a, &b) {
        (Scope::Prefix(x), Scope::Prefix(y)) if x != y => {
            // Two different prefixes: only the longer (inner) one can hold
            // for both, if one contains the other; otherwise exact.
            if x.starts_with(y.as_str()) {
                a
            } else if y.starts_with(x.as_str()) {
                b
            } else {
                Scope::Exact
            }
        }
        _ if width(&b) < width(&a) => b,
        _ => a,
    }
}

/// The built-in rules (`[[rules]]`, Admin API `rules put`).
pub struct Rules {
    policy: Policy,
    ttl: Duration,
}

impl Rules {
    pub fn from_state(state: &State, ttl: Duration) -> Self {
        Self {
            policy: Policy::new(state.rules.values()),
            ttl,
        }
    }

    /// Buckets from `candidates` on which `principal` has an allow rule.
    pub fn visible<'a>(
        &self,
        principal: &s3gate_proto::Principal,
        candidates: impl Iterator<Item = &'a str>,
    ) -> Vec<String> {
        self.policy.visible(principal, candidates)
    }
}

#[async_trait]
impl PolicySource for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    async fn decide(&self, req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
        let (decision, rule) = self.policy.explain(req, self.ttl);
        let kind = match (decision.allow, rule) {
            (true, _) => VerdictKind::Allow,
            (false, Some(_)) => VerdictKind::Deny,
            (false, None) => VerdictKind::Abstain,
        };
        Ok(Verdict {
            kind,
            reason: decision.reason,
            by: rule.map(str::to_owned),
            scope: decision.scope,
            ttl: decision.ttl,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use s3gate_proto::{Principal, Resource};

    use super::*;

    /// The example of ARCHITECTURE.md's "how to add a policy source": a
    /// source that denies every request from outside office hours (here: a
    /// flag), and abstains otherwise.
    struct ClosedForTheNight {
        closed: bool,
    }

    #[async_trait]
    impl PolicySource for ClosedForTheNight {
        fn name(&self) -> &'static str {
            "closed-for-the-night"
        }

        async fn decide(&self, _req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
            Ok(Verdict {
                kind: if self.closed {
                    VerdictKind::Deny
                } else {
                    VerdictKind::Abstain
                },
                reason: "closed for the night".to_owned(),
                by: Some(self.name().to_owned()),
                scope: Scope::Bucket,
                ttl: Duration::from_secs(60),
            })
        }
    }

    /// A source that cannot answer.
    struct Broken;

    #[async_trait]
    impl PolicySource for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }

        async fn decide(&self, _req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
            Err(SourceError::new(self.name(), "timed out"))
        }
    }

    /// Answers `kind` for everything, with the given scope.
    struct Fixed(VerdictKind, Scope);

    #[async_trait]
    impl PolicySource for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        async fn decide(&self, _req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
            Ok(Verdict {
                kind: self.0,
                reason: format!("fixed {:?}", self.0),
                by: Some("fixed".to_owned()),
                scope: self.1.clone(),
                ttl: Duration::from_secs(30),
            })
        }
    }

    fn request() -> AuthorizeRequest {
        AuthorizeRequest {
            principal: Principal {
                name: Arc::from("alice"),
                groups: Arc::from(Vec::<Arc<str>>::new()),
                access_key: None,
            },
            action: Cow::Borrowed("s3:GetObject"),
            bucket: "data".to_owned(),
            resource: Resource::Object("reports/q1.csv".to_owned()),
            context: Default::default(),
        }
    }

    fn chain(sources: Vec<Arc<dyn PolicySource>>) -> PolicyChain {
        PolicyChain::new(sources)
    }

    #[test]
    fn an_answer_is_never_cached_wider_or_longer_than_it_said() {
        let max = Duration::from_secs(30);
        let answer = |scope_prefix: Option<&str>, ttl_s| Answer {
            kind: VerdictKind::Allow,
            reason: None,
            ttl_s,
            scope_prefix: scope_prefix.map(str::to_owned),
        };
        // Silent: the exact request, the configured TTL.
        let v = answer(None, None).into_verdict("rego", &request(), max);
        assert_eq!((v.scope, v.ttl), (Scope::Exact, max));
        assert_eq!(v.reason, "allowed by rego");
        // A prefix the key is under, a shorter TTL.
        let v = answer(Some("reports/"), Some(5)).into_verdict("sql", &request(), max);
        assert_eq!(v.scope, Scope::Prefix("reports/".to_owned()));
        assert_eq!(v.ttl, Duration::from_secs(5));
        // A prefix that does not cover the request, a TTL past the cap.
        let v = answer(Some("other/"), Some(3600)).into_verdict("sql", &request(), max);
        assert_eq!((v.scope, v.ttl), (Scope::Exact, max));
        // A bucket-level request holds for itself only.
        let mut bucket = request();
        bucket.resource = Resource::Bucket;
        let v = answer(Some(""), None).into_verdict("opa", &bucket, max);
        assert_eq!(v.scope, Scope::Exact);
    }

    #[tokio::test]
    async fn explicit_deny_from_any_source_wins() {
        let allow: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Allow, Scope::Bucket));
        let night: Arc<dyn PolicySource> = Arc::new(ClosedForTheNight { closed: true });
        for order in [vec![allow.clone(), night.clone()], vec![night, allow]] {
            let d = chain(order).decide(&request()).await.unwrap();
            assert!(!d.allow);
            assert_eq!(d.reason, "closed for the night");
        }
    }

    #[tokio::test]
    async fn abstentions_leave_the_decision_to_the_others() {
        let open: Arc<dyn PolicySource> = Arc::new(ClosedForTheNight { closed: false });
        let allow: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Allow, Scope::Exact));
        let d = chain(vec![open.clone(), allow])
            .decide(&request())
            .await
            .unwrap();
        assert!(d.allow);
        // The narrower scope and the shorter TTL of the two.
        assert_eq!(d.scope, Scope::Exact);
        assert_eq!(d.ttl, Duration::from_secs(30));
        let d = chain(vec![open]).decide(&request()).await.unwrap();
        assert!(!d.allow, "nothing allowed it");
        assert!(!chain(vec![]).decide(&request()).await.unwrap().allow);
    }

    #[tokio::test]
    async fn a_source_that_cannot_answer_fails_the_chain_unless_denied_before() {
        let allow: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Allow, Scope::Bucket));
        let deny: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Deny, Scope::Bucket));
        let broken: Arc<dyn PolicySource> = Arc::new(Broken);
        assert!(chain(vec![allow, broken.clone()])
            .decide(&request())
            .await
            .is_err());
        let d = chain(vec![deny, broken]).decide(&request()).await.unwrap();
        assert!(!d.allow);
    }

    /// The built-in rules as a source: allow `data/reports/*`, deny
    /// `data/reports/secret/*`.
    fn rules() -> Arc<dyn PolicySource> {
        let rule = |id: &str, effect, resource: &str| crate::state::RuleRecord {
            id: id.to_owned(),
            effect,
            principals: vec!["alice".to_owned()],
            actions: vec!["s3:GetObject".to_owned()],
            resources: vec![resource.to_owned()],
        };
        let records = [
            rule("reports", crate::config::Effect::Allow, "data/reports/*"),
            rule(
                "secret",
                crate::config::Effect::Deny,
                "data/reports/secret/*",
            ),
        ];
        Arc::new(Rules {
            policy: Policy::new(&records),
            ttl: Duration::from_secs(30),
        })
    }

    #[tokio::test]
    async fn prefix_scopes_from_rules_survive_the_chain() {
        let p = |s: &str| Scope::Prefix(s.to_owned());
        let open: Arc<dyn PolicySource> = Arc::new(ClosedForTheNight { closed: false });
        // request(): `reports/q1.csv` leaves `reports/secret/` after `reports/`.
        let d = chain(vec![open.clone(), rules()])
            .decide(&request())
            .await
            .unwrap();
        assert!(d.allow);
        assert_eq!(d.scope, p("reports/q"));
        // A narrower prefix from another source narrows the decision.
        let inner: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Abstain, p("reports/q1")));
        let d = chain(vec![rules(), inner])
            .decide(&request())
            .await
            .unwrap();
        assert!(d.allow);
        assert_eq!(d.scope, p("reports/q1"));
        // A deny keeps its own prefix.
        let mut secret = request();
        secret.resource = Resource::Object("reports/secret/k".to_owned());
        let d = chain(vec![open, rules()]).decide(&secret).await.unwrap();
        assert!(!d.allow);
        assert_eq!(d.scope, p("reports/secret/"));
    }

    #[tokio::test]
    async fn explain_shows_every_answer_and_who_decided() {
        let allow: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Allow, Scope::Bucket));
        let night: Arc<dyn PolicySource> = Arc::new(ClosedForTheNight { closed: true });
        let broken: Arc<dyn PolicySource> = Arc::new(Broken);
        // A deny decides; the sources after it are still shown.
        let e = chain(vec![allow.clone(), night, broken.clone()])
            .explain_sources(&request())
            .await;
        let names: Vec<_> = e.answers.iter().map(|a| a.source).collect();
        assert_eq!(names, ["fixed", "closed-for-the-night", "broken"]);
        assert!(e.answers[2].verdict.is_err());
        let (decision, _, by) = e.outcome.unwrap();
        assert!(!decision.allow);
        assert_eq!(by, Some("closed-for-the-night"));
        // An allow, then a source that cannot answer: unavailable.
        let e = chain(vec![allow.clone(), broken])
            .explain_sources(&request())
            .await;
        assert_eq!(e.outcome.unwrap_err().0, "broken");
        // The allowing source, the combined scope and TTL.
        let exact: Arc<dyn PolicySource> = Arc::new(Fixed(VerdictKind::Abstain, Scope::Exact));
        let e = chain(vec![exact, allow]).explain_sources(&request()).await;
        let (decision, _, by) = e.outcome.unwrap();
        assert!(decision.allow);
        assert_eq!(by, Some("fixed"));
        assert_eq!(
            (decision.scope, decision.ttl),
            (Scope::Exact, Duration::from_secs(30))
        );
    }

    #[test]
    fn scopes_narrow() {
        let p = |s: &str| Scope::Prefix(s.to_owned());
        assert_eq!(narrower(Scope::Bucket, p("a/")), p("a/"));
        assert_eq!(narrower(p("a/"), Scope::Exact), Scope::Exact);
        assert_eq!(narrower(p("a/"), p("a/b/")), p("a/b/"));
        assert_eq!(narrower(p("a/"), p("b/")), Scope::Exact);
        assert_eq!(narrower(Scope::Bucket, Scope::Bucket), Scope::Bucket);
    }
}
