//! `s3gate check-config FILE`: validates a config file as `serve` does and
//! prints the effective configuration (defaults filled in, secrets
//! redacted, `env:` references by name). Also the loader `serve` and
//! `controlplane` use, so all three report the same located errors and the
//! same warnings.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s3gate_controlplane::config::{
    client_auth_name, principal_from_name, ClientAuth, FileConfig, LoadOptions, PrincipalFrom,
    Secret, TlsConfig,
};
use s3gate_controlplane::credential::CredentialSpec;
use tracing::warn;

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML config file to check (as given to `serve --config`). Exits
    /// 0 if it is valid, 64 with the place of the first problem otherwise;
    /// warnings go to stderr either way.
    file: PathBuf,
}

/// Where `serve` listens when neither the file nor `--listen` says.
const DEFAULT_LISTEN: &str = "127.0.0.1:9080";

pub fn run(args: CheckConfigArgs) -> Result<(), Failure> {
    let name = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read {name}: {e}")))?;
    let mut cfg = FileConfig::parse_with(&text, Some(&name), LoadOptions::default())
        .map_err(|e| Failure::Usage(e.into()))?;
    cfg.relative_to(&args.file);
    let raw = FileConfig::parse_unresolved(&text).map_err(|e| Failure::Usage(e.into()))?;
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    // The certificate, key and client CA load as `serve` would load them.
    if let Some((settings, _)) = tls_settings(&cfg)? {
        s3gate_dataplane::tls::ServerCert::load(&settings.cert, &settings.key)
            .and_then(|(cert, _)| s3gate_dataplane::tls::server_config(&settings, cert))
            .map_err(|e| Failure::Usage(cfg.invalid_at("tls", e.field(), &e).into()))?;
    }
    print!("{}", render(&name, &cfg, &raw));
    Ok(())
}

/// Loads the config file of `serve` or `controlplane` (`allow_empty`: a
/// control plane seeding Redis may read only `[cache]` from it). A problem
/// is a usage failure whose message says where; warnings are logged.
pub fn load(path: &Path, allow_empty: bool) -> Result<FileConfig, Failure> {
    let cfg = FileConfig::load_with(path, LoadOptions { allow_empty })
        .map_err(|e| Failure::Usage(e.into()))?;
    for warning in &cfg.warnings {
        warn!(%warning, "config file: probably not what was meant");
    }
    Ok(cfg)
}

/// The data plane's settings for `[tls]`, and where it listens; `None`
/// without the section.
pub fn tls_settings(
    cfg: &FileConfig,
) -> Result<Option<(s3gate_dataplane::tls::TlsSettings, std::net::SocketAddr)>, Failure> {
    let Some(tls) = &cfg.tls else {
        return Ok(None);
    };
    let listen = match tls.listen {
        Some(listen) => listen,
        None => TlsConfig::DEFAULT_LISTEN
            .parse()
            .map_err(|e| Failure::Usage(anyhow::anyhow!("default TLS listen address: {e}")))?,
    };
    let settings = s3gate_dataplane::tls::TlsSettings {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        client_ca: tls.client_ca.clone(),
        client_auth: match tls.client_auth {
            ClientAuth::None => s3gate_dataplane::ClientAuth::None,
            ClientAuth::Optional => s3gate_dataplane::ClientAuth::Optional,
            ClientAuth::Required => s3gate_dataplane::ClientAuth::Required,
        },
    };
    Ok(Some((settings, listen)))
}

/// The data plane's name for `principal_from`.
pub fn principal_from(p: PrincipalFrom) -> s3gate_dataplane::PrincipalFrom {
    match p {
        PrincipalFrom::Cn => s3gate_dataplane::PrincipalFrom::Cn,
        PrincipalFrom::SanDns => s3gate_dataplane::PrincipalFrom::SanDns,
        PrincipalFrom::SanUri => s3gate_dataplane::PrincipalFrom::SanUri,
        PrincipalFrom::SanEmail => s3gate_dataplane::PrincipalFrom::SanEmail,
    }
}

/// The effective configuration as TOML. Secrets come from `raw` (the file
/// as written): an `env:VAR` reference is shown as such, anything else as
/// `<redacted>`.
fn render(name: &str, cfg: &FileConfig, raw: &FileConfig) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "# {name} is valid. Effective configuration: defaults filled in, secrets {}, env: references by name.",
        q(REDACTED)
    ));
    match cfg.listen {
        Some(listen) => line(format!("listen = {}", q(&listen.to_string()))),
        None => line(format!(
            "# listen: not set; serve listens on {DEFAULT_LISTEN} unless --listen says otherwise"
        )),
    }
    line(format!("region = {}", q(&cfg.region)));
    line(format!("base_domains = {}", list(&cfg.base_domains)));
    let proxies: Vec<String> = cfg.trusted_proxies.iter().map(|n| n.to_string()).collect();
    line(format!("trusted_proxies = {}", list(&proxies)));
    match &cfg.default_backend {
        Some(d) => line(format!("default_backend = {}", q(d))),
        None => line(
            "# default_backend: off (bucket names no [[buckets]] entry matches do not exist)"
                .into(),
        ),
    }

    line(String::new());
    line("[cache]".into());
    line(format!(
        "decision_ttl = {}",
        duration(cfg.cache.decision_ttl)
    ));
    line(format!("key_ttl = {}", duration(cfg.cache.key_ttl)));
    line(format!("route_ttl = {}", duration(cfg.cache.route_ttl)));

    // Flags of `serve` override these; the defaults are the data plane's.
    let d = s3gate_dataplane::Limits::default();
    let f = &cfg.limits;
    line(String::new());
    line("[limits]".into());
    line(format!(
        "max_connections = {}",
        f.max_connections.unwrap_or(d.max_connections)
    ));
    line(format!(
        "max_requests = {}",
        f.max_requests.unwrap_or(d.max_requests)
    ));
    for (field, value, default) in [
        ("header_timeout", f.header_timeout, d.header_timeout),
        (
            "body_idle_timeout",
            f.body_idle_timeout,
            d.body_idle_timeout,
        ),
        ("body_deadline", f.body_deadline, d.body_deadline),
        ("send_timeout", f.send_timeout, d.send_timeout),
    ] {
        line(format!("{field} = {}", duration(value.unwrap_or(default))));
    }
    line(format!(
        "buffer_budget = {}",
        bytes(f.buffer_budget.unwrap_or(d.buffer_budget))
    ));

    if let Some(tls) = &cfg.tls {
        line(String::new());
        line("[tls]".into());
        match tls.listen {
            Some(listen) => line(format!("listen = {}", q(&listen.to_string()))),
            None => line(format!(
                "listen = {}  # the default; --tls-listen overrides",
                q(TlsConfig::DEFAULT_LISTEN)
            )),
        }
        line(format!("cert = {}", q(&tls.cert.display().to_string())));
        line(format!("key = {}", q(&tls.key.display().to_string())));
        match &tls.client_ca {
            Some(ca) => line(format!("client_ca = {}", q(&ca.display().to_string()))),
            None => line("# client_ca: not set".into()),
        }
        line(format!(
            "client_auth = {}",
            q(client_auth_name(tls.client_auth))
        ));
        line(format!(
            "principal_from = {}",
            q(principal_from_name(tls.principal_from))
        ));
    }
    // `serve` only; a data plane takes --sigv2.
    line(String::new());
    line("[auth]".into());
    line(format!("sigv2 = {}", cfg.auth.sigv2));

    for (i, b) in cfg.backends.iter().enumerate() {
        let shown = match raw.backends.get(i) {
            Some(r) => map_secrets(&r.credentials, shown),
            None => map_secrets(&b.credentials, |_| REDACTED.to_owned()),
        };
        line(String::new());
        line("[[backends]]".into());
        line(format!("name = {}", q(&b.name)));
        line(format!("endpoint = {}", q(&b.endpoint)));
        line(format!("region = {}", q(&b.region)));
        line(format!(
            "addressing_style = {}",
            json_value(&serde_json::to_value(b.addressing_style).unwrap_or_default())
        ));
        line(format!(
            "credentials = {}",
            json_value(&serde_json::to_value(&shown).unwrap_or_default())
        ));
        if let Some(ca) = &b.ca_bundle {
            line(format!("ca_bundle = {}", q(ca)));
        }
        line(format!("insecure_skip_verify = {}", b.insecure_skip_verify));
        line(format!("key_segment_guard = {}", b.key_segment_guard));
        if let Some(proxy) = &b.egress.proxy {
            line(format!("proxy = {}", q(proxy)));
        }
        if !b.egress.no_proxy.is_empty() {
            line(format!("no_proxy = {}", list(&b.egress.no_proxy)));
        }
        if let Some(creds) = &b.egress.proxy_credentials {
            // An env: reference, never the secret.
            line(format!("proxy_credentials = {}", q(creds)));
        }
        line(format!("max_connections = {}", b.limits.max_connections));
        if let Some(t) = b.limits.connect_timeout {
            line(format!("connect_timeout = {}", duration(t)));
        }
        line(format!(
            "response_timeout = {}",
            duration(b.limits.response_timeout)
        ));
    }
    for b in &cfg.buckets {
        line(String::new());
        line("[[buckets]]".into());
        line(format!("name = {}", q(&b.name)));
        line(format!("backend = {}", q(&b.backend)));
        if s3gate_proto::buckets::is_pattern(&b.name) {
            line("# a pattern: every bucket name it matches".into());
        }
        line(format!(
            "backend_bucket = {}",
            q(&s3gate_controlplane::state::default_backend_bucket(
                &b.name,
                b.backend_bucket.as_deref()
            ))
        ));
        if let Some(c) = &b.credentials {
            line(format!("# credentials: {}", c.summary()));
            line(format!("credentials = {}", bucket_credentials(c)));
        }
        for r in &b.cors {
            line(String::new());
            line("[[buckets.cors]]".into());
            line(format!("allowed_origins = {}", list(&r.allowed_origins)));
            line(format!("allowed_methods = {}", list(&r.allowed_methods)));
            line(format!("allowed_headers = {}", list(&r.allowed_headers)));
            line(format!("expose_headers = {}", list(&r.expose_headers)));
            if let Some(max_age) = r.max_age {
                line(format!("max_age = {max_age}"));
            }
        }
    }
    for (i, k) in cfg.keys.iter().enumerate() {
        let secret = raw
            .keys
            .get(i)
            .map_or_else(|| REDACTED.to_owned(), |r| shown(&r.secret_key));
        line(String::new());
        line("[[keys]]".into());
        line(format!("access_key = {}", q(&k.access_key)));
        line(format!("secret_key = {}", q(&secret)));
        line(format!("principal = {}", q(&k.principal)));
        line(format!("groups = {}", list(&k.groups)));
    }
    for (i, r) in cfg.rules.iter().enumerate() {
        line(String::new());
        line(format!("[[rules]]  # id r{:03}", i + 1));
        line(format!(
            "effect = {}",
            json_value(&serde_json::to_value(r.effect).unwrap_or_default())
        ));
        line(format!("principals = {}", list(&r.principals)));
        line(format!("actions = {}", list(&r.actions)));
        line(format!("resources = {}", list(&r.resources)));
    }
    for o in &cfg.oidc {
        line(String::new());
        line("[[oidc]]".into());
        line(format!("name = {}", q(&o.name)));
        line(format!("issuer = {}", q(&o.issuer)));
        line(format!("audiences = {}", list(&o.audiences)));
        line(format!("principal_claim = {}", q(&o.principal_claim)));
        match &o.groups_claim {
            Some(g) => line(format!("groups_claim = {}", q(g))),
            None => line("# groups_claim: not set; tokens give no groups".into()),
        }
        if let Some(ca) = &o.ca_bundle {
            line(format!("ca_bundle = {}", q(ca)));
        }
    }
    for r in &cfg.roles {
        line(String::new());
        line("[[roles]]".into());
        line(format!("arn = {}", q(&r.arn)));
        line(format!("oidc = {}", q(&r.oidc)));
        line(format!("groups = {}", list(&r.groups)));
        let claims: Vec<String> = r
            .require_claims
            .iter()
            .map(|(name, values)| match values.0.as_slice() {
                [one] => format!("{} = {}", q(name), q(one)),
                many => format!("{} = {}", q(name), list(many)),
            })
            .collect();
        if claims.is_empty() {
            line("require_claims = {}".into());
        } else {
            line(format!("require_claims = {{ {} }}", claims.join(", ")));
        }
        line(format!("max_session = {}", duration(r.max_session)));
    }
    render_sources(cfg, raw, &mut line);
    out
}

/// The `[[policy]]` chain and the `[[identity]]` sources, each entry with a
/// one-line summary; URLs without credentials (an `env:VAR` reference by
/// name), queries whole.
fn render_sources(cfg: &FileConfig, raw: &FileConfig, line: &mut impl FnMut(String)) {
    use s3gate_controlplane::config::{IdentityConfig, PolicyConfig, SqlSourceConfig};
    use s3gate_controlplane::sources::sql::redacted_url;
    // As written when it is an env: reference; else the resolved URL
    // without its userinfo.
    let sql_url = |resolved: &SqlSourceConfig, written: Option<&SqlSourceConfig>| match written
        .map(|w| w.url.expose())
    {
        Some(w) if w.starts_with("env:") => w.clone(),
        _ => redacted_url(resolved.url.expose()),
    };
    line(String::new());
    if cfg.policy.is_empty() {
        line("# [[policy]]: none; the built-in [[rules]] alone decide".into());
    }
    for (i, p) in cfg.policy.iter().enumerate() {
        // Summarized as written: an env: URL by name, never its value.
        let summary = raw.policy.get(i).unwrap_or(p).summary();
        line(format!("[[policy]]  # policy[{i}] {summary}"));
        line(format!("kind = {}", q(p.kind())));
        match p {
            PolicyConfig::Builtin(_) => {}
            PolicyConfig::Rego(r) => {
                let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
                line(format!("files = {}", list(&files)));
                line(format!("query = {}", q(&r.query)));
            }
            PolicyConfig::Opa(r) | PolicyConfig::Plugin(r) => {
                line(format!("url = {}", q(&redacted_url(&r.url))));
                line(format!("timeout = {}", duration(r.timeout)));
            }
            PolicyConfig::Sql(c) => {
                let written = match raw.policy.get(i) {
                    Some(PolicyConfig::Sql(w)) => Some(w),
                    _ => None,
                };
                line(format!("url = {}", q(&sql_url(c, written))));
                line(format!("query = {}", q(&c.query)));
                line(format!("timeout = {}", duration(c.timeout)));
            }
        }
        line(String::new());
    }
    if cfg.identity.is_empty() {
        line("# [[identity]]: none; the built-in keys (and STS sessions, tokens) alone".into());
    }
    for (i, p) in cfg.identity.iter().enumerate() {
        let summary = raw.identity.get(i).unwrap_or(p).summary();
        line(format!("[[identity]]  # identity[{i}] {summary}"));
        line(format!("kind = {}", q(p.kind())));
        match p {
            IdentityConfig::Plugin(r) => {
                line(format!("url = {}", q(&redacted_url(&r.url))));
                line(format!("timeout = {}", duration(r.timeout)));
            }
            IdentityConfig::Sql(c) => {
                let written = match raw.identity.get(i) {
                    Some(IdentityConfig::Sql(w)) => Some(w),
                    _ => None,
                };
                line(format!("url = {}", q(&sql_url(c, written))));
                line(format!("query = {}", q(&c.query)));
                line(format!("timeout = {}", duration(c.timeout)));
            }
        }
        line(String::new());
    }
}

/// A bucket's credential source as a TOML inline table, the URL without
/// credentials.
fn bucket_credentials(c: &s3gate_controlplane::credential::BucketCredentialSource) -> String {
    use s3gate_controlplane::credential::BucketCredentialSource;
    use s3gate_controlplane::sources::sql::redacted_url;
    let mut shown = c.clone();
    match &mut shown {
        BucketCredentialSource::Plugin(r) => r.url = redacted_url(&r.url),
        BucketCredentialSource::Sql(s) => s.url = redacted_url(&s.url),
    }
    json_value(&serde_json::to_value(&shown).unwrap_or_default())
}

const REDACTED: &str = "<redacted>";

/// How a secret as written in the file is shown: an `env:VAR` reference
/// names a variable, not a value; anything else is the secret itself.
fn shown(secret: &Secret) -> String {
    let written = secret.expose();
    if written.starts_with("env:") {
        written.clone()
    } else {
        REDACTED.to_owned()
    }
}

/// The credential with each secret replaced by what `f` makes of it.
fn map_secrets(spec: &CredentialSpec, f: impl Fn(&Secret) -> String) -> CredentialSpec<String> {
    match spec.try_map(|_, s| Ok::<_, Infallible>(f(s))) {
        Ok(shown) => shown,
        Err(never) => match never {},
    }
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

fn duration(d: Duration) -> String {
    q(&humantime::format_duration(d).to_string())
}

/// Bytes with the largest unit `parse_bytes` reads back exactly.
fn bytes(n: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n.trailing_zeros() >= shift {
            return q(&format!("{}{unit}", n >> shift));
        }
    }
    n.to_string()
}

/// A JSON value (a serialized enum or credential) as a TOML value; a
/// table's `kind` first.
fn json_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => q(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(json_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> =
                map.iter().filter(|(_, v)| !v.is_null()).collect();
            fields.sort_by_key(|(k, _)| (k.as_str() != "kind", k.as_str()));
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k} = {}", json_value(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Null => q(""),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = r#"
listen = "127.0.0.1:9080"
[[backends]]
name = "local"
endpoint = "http://127.0.0.1:9000/"
access_key = "BACKENDKEY"
secret_key = "BACKEND-INLINE-SECRET"
[[backends]]
name = "other"
endpoint = "https://s3.example.com"
credentials = { kind = "static_hmac", access_key = "OTHERKEY", secret_key = "env:PATH", session_token = "TOKEN-INLINE-SECRET" }
[[buckets]]
name = "data"
backend = "local"
[[buckets.cors]]
allowed_origins = ["https://app.example.com"]
allowed_methods = ["GET", "PUT"]
max_age = 600
[[keys]]
access_key = "S3GATEALICE01"
secret_key = "ALICE-INLINE-SECRET"
principal = "alice"
groups = ["analysts"]
[[rules]]
effect = "allow"
principals = ["alice"]
actions = ["s3:Get*", "s3:ListBucket"]
resources = ["data", "data/*", "typo/*"]
[limits]
buffer_budget = "64MiB"
[[oidc]]
name = "corp"
issuer = "https://idp.example.com/realms/corp"
audiences = ["s3gate", "minio"]
groups_claim = "groups"
ca_bundle = "idp-ca.pem"
[[oidc]]
name = "ci"
issuer = "http://127.0.0.1:8080"
audiences = ["s3gate"]
principal_claim = "repository"
[[roles]]
arn = "arn:aws:iam::000000000000:role/analysts"
oidc = "corp"
groups = ["analysts"]
require_claims = { groups = "analysts", email_verified = true, amr = ["mfa", "pwd"] }
max_session = "12h"
[[roles]]
arn = "arn:aws:iam::000000000000:role/ci"
oidc = "ci"
"#;

    #[test]
    fn sources_are_shown_without_passwords() {
        const SOURCES: &str = r#"
[[backends]]
name = "local"
endpoint = "http://127.0.0.1:9000"
access_key = "BACKENDKEY"
secret_key = "BACKENDSECRET"

[[buckets]]
name = "data"
backend = "local"
credentials = { kind = "sql", query = "SELECT access_key, secret_key FROM bucket_keys WHERE principal = :principal AND bucket = :bucket", timeout = "200ms" }

[[policy]]
kind = "builtin"

[[policy]]
kind = "sql"
url = "postgres://s3gate:hunter2@db.example.com/grants"
query = "SELECT effect FROM grants WHERE principal = :principal"

[[policy]]
kind = "opa"
url = "http://opa:hunter2@127.0.0.1:8181/v1/data/s3gate/decision"

[[identity]]
kind = "sql"
url = "env:PATH"
query = "SELECT secret, principal FROM k WHERE access_key = :access_key"
"#;
        let cfg = FileConfig::parse(SOURCES).unwrap();
        let raw = FileConfig::parse_unresolved(SOURCES).unwrap();
        let shown = render("s3gate.toml", &cfg, &raw);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&std::env::var("PATH").unwrap()), "{shown}");
        for expected in [
            "[[policy]]  # policy[0] builtin",
            "[[policy]]  # policy[1] sql postgres://***@db.example.com/grants query=\"SELECT effect FROM grants WHERE principal = :principal\"",
            "url = \"http://***@127.0.0.1:8181/v1/data/s3gate/decision\"",
            "[[identity]]  # identity[0] sql env:PATH",
            "url = \"env:PATH\"",
            "# credentials: sql (the first [[policy]]/[[identity]] sql database) query=",
            "timeout=200ms per_principal",
        ] {
            assert!(shown.contains(expected), "{expected} not in\n{shown}");
        }
        let back = FileConfig::parse_unresolved(&shown).unwrap();
        assert_eq!(back.policy.len(), 3);
        assert_eq!(back.identity.len(), 1);
        assert_eq!(back.buckets[0].credentials, cfg.buckets[0].credentials);
    }

    #[test]
    fn effective_config_redacts_secrets() {
        let cfg =
            FileConfig::parse_with(FILE, Some("s3gate.toml"), LoadOptions::default()).unwrap();
        let raw = FileConfig::parse_unresolved(FILE).unwrap();
        let shown = render("s3gate.toml", &cfg, &raw);
        let expected = r#"# s3gate.toml is valid. Effective configuration: defaults filled in, secrets "<redacted>", env: references by name.
listen = "127.0.0.1:9080"
region = "us-east-1"
base_domains = []
trusted_proxies = []
# default_backend: off (bucket names no [[buckets]] entry matches do not exist)

[cache]
decision_ttl = "30s"
key_ttl = "1m"
route_ttl = "5m"

[limits]
max_connections = 4096
max_requests = 1024
header_timeout = "30s"
body_idle_timeout = "30s"
body_deadline = "1m"
send_timeout = "1m"
buffer_budget = "64MiB"

[auth]
sigv2 = true

[[backends]]
name = "local"
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
addressing_style = "path"
credentials = { kind = "static_hmac", access_key = "BACKENDKEY", secret_key = "<redacted>" }
insecure_skip_verify = false
key_segment_guard = true
max_connections = 512
response_timeout = "1m"

[[backends]]
name = "other"
endpoint = "https://s3.example.com"
region = "us-east-1"
addressing_style = "path"
credentials = { kind = "static_hmac", access_key = "OTHERKEY", secret_key = "env:PATH", session_token = "<redacted>" }
insecure_skip_verify = false
key_segment_guard = true
max_connections = 512
response_timeout = "1m"

[[buckets]]
name = "data"
backend = "local"
backend_bucket = "data"

[[buckets.cors]]
allowed_origins = ["https://app.example.com"]
allowed_methods = ["GET", "PUT"]
allowed_headers = []
expose_headers = []
max_age = 600

[[keys]]
access_key = "S3GATEALICE01"
secret_key = "<redacted>"
principal = "alice"
groups = ["analysts"]

[[rules]]  # id r001
effect = "allow"
principals = ["alice"]
actions = ["s3:Get*", "s3:ListBucket"]
resources = ["data", "data/*", "typo/*"]

[[oidc]]
name = "corp"
issuer = "https://idp.example.com/realms/corp"
audiences = ["s3gate", "minio"]
principal_claim = "sub"
groups_claim = "groups"
ca_bundle = "idp-ca.pem"

[[oidc]]
name = "ci"
issuer = "http://127.0.0.1:8080"
audiences = ["s3gate"]
principal_claim = "repository"
# groups_claim: not set; tokens give no groups

[[roles]]
arn = "arn:aws:iam::000000000000:role/analysts"
oidc = "corp"
groups = ["analysts"]
require_claims = { "amr" = ["mfa", "pwd"], "email_verified" = "true", "groups" = "analysts" }
max_session = "12h"

[[roles]]
arn = "arn:aws:iam::000000000000:role/ci"
oidc = "ci"
groups = []
require_claims = {}
max_session = "1h"

# [[policy]]: none; the built-in [[rules]] alone decide
# [[identity]]: none; the built-in keys (and STS sessions, tokens) alone
"#;
        assert_eq!(shown, expected);
        for secret in ["INLINE-SECRET", &std::env::var("PATH").unwrap()] {
            assert!(!shown.contains(secret), "{secret} shown");
        }
        // what check-config prints is a config file s3gate reads back
        let back = FileConfig::parse_unresolved(&shown).unwrap();
        assert_eq!(back.rules[0].resources, cfg.rules[0].resources);
        assert_eq!(back.limits.buffer_budget, Some(64 << 20));
        assert_eq!(back.buckets[0].cors[0].max_age, Some(600));
        assert!(back.auth.sigv2);
        assert_eq!(back.oidc[1].principal_claim, "repository");
        assert_eq!(back.roles[0].require_claims, cfg.roles[0].require_claims);
        assert_eq!(back.roles[1].max_session, cfg.roles[1].max_session);
        assert_eq!(
            cfg.warnings,
            ["s3gate.toml:28:32: rules[0] (r001): resource \"typo/*\" names no configured bucket (buckets: data)"]
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(q("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(bytes(1000), "1000");
        assert_eq!(bytes(3 << 10), "\"3KiB\"");
    }
}
