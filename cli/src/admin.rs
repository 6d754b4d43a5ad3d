//! `s3gate admin`: the Admin gRPC API from a shell. Human-readable tables by
//! default, `--json` for scripts (one JSON document per call).

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use s3gate_proto::pb;
use s3gate_proto::pb::admin_client::AdminClient;
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// How long connecting to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Admin call may take once connected.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to check when the control plane cannot be reached, for error messages.
const CHECK_URL: &str = "Is the control plane running, and is this its gRPC address (where \
    `s3gate controlplane --listen` or `s3gate serve --grpc-listen` listens)? \
    Set it with --control-plane or S3GATE_CONTROL_PLANE.";

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  export S3GATE_CONTROL_PLANE=http://127.0.0.1:9090 S3GATE_ADMIN_TOKEN=...
  s3gate admin status
  s3gate admin keys create --principal alice --group analysts
  s3gate admin sessions revoke --principal alice@example.com
  s3gate admin rules put --id analysts-read --effect allow --principal group:analysts \\
      --action s3:GetObject --action s3:ListBucket --resource data --resource 'data/*'
  s3gate admin --json keys list")]
pub struct AdminArgs {
    /// The control plane's gRPC URL, http://HOST:PORT: the address of
    /// `s3gate controlplane --listen`, or of `s3gate serve --grpc-listen`.
    #[arg(
        long = "control-plane",
        env = "S3GATE_CONTROL_PLANE",
        value_name = "URL",
        default_value = "http://127.0.0.1:9090"
    )]
    url: String,
    /// The admin token: the --admin-token (or S3GATE_ADMIN_TOKEN) the
    /// control plane was started with.
    #[arg(long, env = "S3GATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON document instead of a table, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

// Parsed once per run: the size of the largest command does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Access keys: the credentials clients sign S3 requests with.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Authorization rules: who may do which S3 actions on which buckets and keys.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Storage backends: the S3 endpoints requests are forwarded to, and the
    /// credentials s3gate signs with there.
    Backends {
        #[command(subcommand)]
        command: BackendsCommand,
    },
    /// Buckets clients see, and where they live.
    Buckets {
        #[command(subcommand)]
        command: BucketsCommand,
    },
    /// Temporary sessions (STS AssumeRoleWithWebIdentity): list, revoke.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Dry-run a request: the decision and the rule that made it.
    #[command(after_help = "\
Examples:
  s3gate admin explain --access-key S3GEXAMPLEKEY0000000 --action s3:GetObject --bucket data --key reports/q1.csv
  s3gate admin explain --principal bob --group analysts --action s3:ListBucket --bucket data --prefix reports/
  s3gate admin explain --action s3:GetObject --bucket public --key index.html   # anonymous")]
    Explain(ExplainArgs),
    /// Control-plane status: replica, state version, store health, counts.
    Status,
    /// Re-read the control plane's config file, as SIGHUP does: its keys,
    /// rules, backends, buckets, [cache] TTLs, [[roles]], [[policy]] chain
    /// and [[identity]] sources (with --redis, the store keeps the state:
    /// only the rest). Data planes forget what changed. A file that
    /// does not load keeps the config in force, and this prints why. Each
    /// replica reads its own file: reload each.
    #[command(after_help = "\
Examples:
  s3gate admin reload
  s3gate admin --json reload")]
    Reload,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for a principal; its secret is shown once.
    #[command(after_help = "\
Example:
  s3gate admin keys create --principal alice --group analysts --group ops")]
    Create {
        /// Who the key belongs to: the name rules match (rules put --principal alice).
        #[arg(long)]
        principal: String,
        /// A group the principal is in, matched by rules with --principal
        /// group:NAME. Repeatable: --group analysts --group ops.
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// A chosen access key id (generated if omitted: S3G and 17 letters and digits).
        #[arg(long)]
        access_key: Option<String>,
    },
    /// List access keys: principal, groups and when each was created (never secrets).
    #[command(after_help = "\
CREATED is in RFC 3339, UTC; keys seeded from a config file show \"from config\".

Examples:
  s3gate admin keys list
  s3gate admin --json keys list")]
    List,
    /// Revoke a key: requests signed with it are refused at every data plane.
    #[command(after_help = "\
Example:
  s3gate admin keys revoke S3GEXAMPLEKEY0000000")]
    Revoke {
        /// The access key id (see `keys list`).
        access_key: String,
    },
    /// New secret, same access key; the old secret stops working. The new
    /// secret is shown once.
    #[command(after_help = "\
Example:
  s3gate admin keys rotate S3GEXAMPLEKEY0000000")]
    Rotate {
        /// The access key id (see `keys list`).
        access_key: String,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Create or replace a rule: who (--principal) may or may not (--effect)
    /// do what (--action) on which buckets and keys (--resource).
    #[command(after_help = RULES_PUT_HELP)]
    Put {
        /// The rule's name; putting an existing id replaces that rule.
        #[arg(long)]
        id: String,
        /// allow, or deny: a matching deny beats any allow.
        #[arg(long, value_parser = ["allow", "deny"])]
        effect: String,
        /// Who: a principal NAME, group:NAME, or * for everyone (anonymous
        /// requests included). Repeatable; any one matches.
        #[arg(long = "principal", value_name = "WHO", required = true)]
        principals: Vec<String>,
        /// An S3 IAM action, globs allowed: s3:GetObject, s3:Get*, s3:*.
        /// Repeatable; any one matches.
        #[arg(long = "action", value_name = "ACTION", required = true)]
        actions: Vec<String>,
        /// BUCKET (the bucket itself), BUCKET/KEY-GLOB (its objects whose key
        /// matches, e.g. data/reports/*), or * (everything). Repeatable; any
        /// one matches.
        #[arg(long = "resource", value_name = "RESOURCE", required = true)]
        resources: Vec<String>,
    },
    /// List every rule.
    #[command(after_help = "\
Examples:
  s3gate admin rules list
  s3gate admin --json rules list")]
    List,
    /// Delete a rule.
    #[command(after_help = "\
Example:
  s3gate admin rules delete analysts-read")]
    Delete {
        /// The rule's id (see `rules list`).
        id: String,
    },
}

/// How rules match, for `rules put --help`.
const RULES_PUT_HELP: &str = "\
A request is allowed when an allow rule matches it and no deny rule does; a
request no rule allows is denied. A rule matches a request when one of its
principals, one of its actions and one of its resources match.

Principals (--principal):
  alice         the principal of a key (keys create --principal alice)
  group:NAME    the keys in group NAME (keys create --group NAME)
  *             everyone, including unsigned (anonymous) requests

Actions (--action): IAM action names; * matches any characters, ? one.
  s3:GetObject  s3:Get*  s3:*

Resources (--resource): a bucket as clients name it, then an optional key glob.
  data              the bucket itself: bucket operations, and listing any prefix
                    (not its objects)
  data/*            every object in bucket data
  data/reports/*    objects whose key matches the glob; listing only prefixes
                    that match it (reports/...)
  *                 every bucket and every object
  Globs (* and ?) work in the bucket part too: logs-*/2024/*.

Examples:
  s3gate admin rules put --id analysts-read --effect allow --principal group:analysts \\
      --action s3:GetObject --action s3:ListBucket --resource data --resource 'data/*'
  s3gate admin rules put --id no-secrets --effect deny --principal '*' \\
      --action 's3:*' --resource 'data/secret/*'
Quote * so the shell leaves it alone.";

// Parsed once per run: `put`'s many flags cost nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum BackendsCommand {
    /// Create or replace a backend. Secrets are read from the environment
    /// variables named by --secret-key-env, --session-token-env and
    /// --ibm-api-key-env, never from the command line.
    #[command(after_help = "\
Examples:
  BACKEND_SECRET=... s3gate admin backends put --name aws --endpoint https://s3.eu-west-1.amazonaws.com \\
      --region eu-west-1 --access-key AKIAEXAMPLE --secret-key-env BACKEND_SECRET
  COS_API_KEY=... s3gate admin backends put --name ibm --kind ibm_iam \\
      --endpoint https://s3.eu-de.cloud-object-storage.appdomain.cloud --region eu-de \\
      --ibm-api-key-env COS_API_KEY --service-instance-id crn:v1:bluemix:public:cloud-object-storage:...
  BACKEND_SECRET=... s3gate admin backends put --name aws-prod --kind aws_assume_role \\
      --endpoint https://s3.eu-west-1.amazonaws.com --region eu-west-1 \\
      --role-arn arn:aws:iam::123456789012:role/s3gate --access-key AKIAEXAMPLE \\
      --secret-key-env BACKEND_SECRET --duration 1h")]
    Put {
        /// The backend's name, which buckets refer to (buckets put --backend NAME).
        #[arg(long)]
        name: String,
        /// The backend's S3 endpoint: http:// or https://, host and port, no
        /// path (e.g. https://s3.eu-west-1.amazonaws.com, http://10.0.0.5:9000).
        #[arg(long, value_name = "URL")]
        endpoint: String,
        /// The region requests to the backend are signed for.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// path (ENDPOINT/BUCKET/KEY) or virtual (BUCKET.HOST/KEY).
        #[arg(long, default_value = "path", value_parser = ["path", "virtual"])]
        addressing_style: String,
        /// How s3gate authenticates there: static_hmac (an access key
        /// pair), ibm_iam (an IBM Cloud API key exchanged for IAM tokens)
        /// or aws_assume_role (a key pair that assumes a role through STS).
        #[arg(long, default_value = "static_hmac", value_parser = ["static_hmac", "ibm_iam", "aws_assume_role"])]
        kind: String,
        /// The access key s3gate signs backend requests (static_hmac) or
        /// STS calls (aws_assume_role) with.
        #[arg(long)]
        access_key: Option<String>,
        /// Environment variable holding the secret key (omit on update to keep the stored one).
        #[arg(long, value_name = "VAR")]
        secret_key_env: Option<String>,
        /// Environment variable holding a session token for the key pair.
        #[arg(long, value_name = "VAR")]
        session_token_env: Option<String>,
        /// ibm_iam: environment variable holding the API key (omit on
        /// update to keep the stored one).
        #[arg(long, value_name = "VAR")]
        ibm_api_key_env: Option<String>,
        /// ibm_iam: the IAM token endpoint [default: https://iam.cloud.ibm.com/identity/token].
        #[arg(long, value_name = "URL")]
        iam_endpoint: Option<String>,
        /// ibm_iam: the COS service instance (sent as ibm-service-instance-id).
        #[arg(long, value_name = "ID")]
        service_instance_id: Option<String>,
        /// aws_assume_role: the role to assume.
        #[arg(long, value_name = "ARN")]
        role_arn: Option<String>,
        /// aws_assume_role: the STS endpoint [default: https://sts.amazonaws.com].
        #[arg(long, value_name = "URL")]
        sts_endpoint: Option<String>,
        /// aws_assume_role: the region STS calls are signed for [default: from the endpoint, else us-east-1].
        #[arg(long, value_name = "REGION")]
        sts_region: Option<String>,
        /// aws_assume_role: the session's lifetime, 15m to 12h [default: 1h].
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// aws_assume_role: the role session name [default: s3gate].
        #[arg(long)]
        session_name: Option<String>,
        /// aws_assume_role: the external id the role's trust policy asks for.
        #[arg(long)]
        external_id: Option<String>,
        /// ibm_iam, aws_assume_role: a PEM file of extra CA certificates to
        /// trust for the IAM or STS endpoint (read by the control plane).
        #[arg(long, value_name = "PATH")]
        credentials_ca_bundle: Option<String>,
        /// A PEM file of extra CA certificates to trust for an https
        /// endpoint (a private CA). A path on the data planes: each reads it there.
        #[arg(long, value_name = "PATH")]
        ca_bundle: Option<String>,
        /// Do not verify the backend's TLS certificate. Development only:
        /// anyone on the network path could pose as the backend.
        #[arg(long)]
        insecure_skip_verify: bool,
        /// Refuse keys with `.`/`..` segments or a leading `/` (on by
        /// default). Set false only for a backend that stores keys
        /// literally (AWS S3, IBM COS), never for one that resolves them as
        /// file paths.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
        key_segment_guard: bool,
        /// Egress proxy towards the backend, http://host:port: CONNECT for
        /// an https endpoint, absolute-form requests for an http one.
        /// Without it the data plane's HTTPS_PROXY/HTTP_PROXY/NO_PROXY apply.
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
        /// A host, domain (and its subdomains), address or CIDR reached
        /// without the proxy, as in NO_PROXY; repeat or separate with commas.
        #[arg(long, value_name = "HOST", value_delimiter = ',')]
        no_proxy: Vec<String>,
        /// env:VAR: the variable in each data plane's environment holding
        /// user:password for the proxy (the secret never leaves it).
        #[arg(long, value_name = "env:VAR")]
        proxy_credentials: Option<String>,
        /// Requests in flight to the backend at once (one connection
        /// each); more wait up to 2 s for a slot, then get 503 SlowDown.
        #[arg(long, value_name = "N", default_value_t = s3gate_proto::DEFAULT_MAX_CONNECTIONS)]
        max_connections: u32,
        /// TCP connect, proxy CONNECT and TLS handshake together (default:
        /// the data plane's --upstream-connect-timeout).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        connect_timeout: Option<std::time::Duration>,
        /// From the request sent to the backend's response headers.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        response_timeout: std::time::Duration,
    },
    /// List backends: endpoints, regions and access keys (never secrets).
    #[command(after_help = "\
Examples:
  s3gate admin backends list
  s3gate admin --json backends list")]
    List,
    /// Delete a backend; refused while a bucket lives on it.
    #[command(after_help = "\
Example:
  s3gate admin backends delete aws")]
    Delete {
        /// The backend's name (see `backends list`).
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum BucketsCommand {
    /// Create or replace a bucket: the name clients use, the backend (and
    /// bucket there) it maps to, and its CORS rules. A put replaces the
    /// whole bucket: without --cors-file, the bucket has no CORS rules.
    #[command(after_help = "\
Examples:
  s3gate admin buckets put --name data --backend aws --backend-bucket data-prod
  s3gate admin buckets put --name 'team-*' --backend aws --backend-bucket 'prod-{name}'
  s3gate admin buckets put --name web --backend aws --cors-file cors.json
  s3gate admin buckets put --name data --backend aws --credentials-sql-query \\
    \"SELECT access_key, secret_key FROM bucket_keys WHERE principal = :principal AND bucket = :bucket\"

cors.json holds the rules in order, with the names of [[buckets.cors]]:
  [{\"allowed_origins\": [\"https://app.example.com\"], \"allowed_methods\": [\"GET\", \"PUT\"],
    \"allowed_headers\": [\"*\"], \"expose_headers\": [\"ETag\"], \"max_age\": 600}]
or the document `aws s3api put-bucket-cors --cors-configuration` takes:
  {\"CORSRules\": [{\"AllowedOrigins\": [\"https://app.example.com\"], \"AllowedMethods\": [\"GET\"]}]}")]
    Put {
        /// The bucket name clients use, or a glob over such names (`*`:
        /// any run of characters, `?`: one). An exact name wins over
        /// patterns; two patterns may not both match a name.
        #[arg(long)]
        name: String,
        /// The backend it lives on (see `backends list`).
        #[arg(long)]
        backend: String,
        /// Its name on the backend, when that differs (default: the
        /// client's name). `{name}` stands for the client's bucket name.
        #[arg(long)]
        backend_bucket: Option<String>,
        /// A JSON file of CORS rules (see below); s3gate answers browsers'
        /// preflights for the bucket from them.
        #[arg(long, value_name = "FILE")]
        cors_file: Option<std::path::PathBuf>,
        /// Sign the bucket's backend requests with credentials from this
        /// plugin (`s3gate.plugin.v1.Plugin` BucketCredentials, per
        /// principal when it says so) instead of the backend's keys.
        #[arg(long, value_name = "URL")]
        credentials_plugin: Option<String>,
        /// Sign the bucket's backend requests with keys this SQL query
        /// returns (access_key, secret_key, optional session_token) for
        /// :principal, :groups, :bucket — per principal when it uses
        /// :principal or :groups — instead of the backend's keys.
        #[arg(long, value_name = "QUERY", conflicts_with = "credentials_plugin")]
        credentials_sql_query: Option<String>,
        /// The database of --credentials-sql-query: postgres://… or
        /// sqlite:… without a password, or env:VAR (read by the control
        /// plane). Default: the control plane's first [[policy]] or
        /// [[identity]] sql entry's database.
        #[arg(long, value_name = "URL", requires = "credentials_sql_query")]
        credentials_sql_url: Option<String>,
        /// How long the credentials plugin or query may take to answer.
        #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
        credentials_timeout: std::time::Duration,
    },
    /// List buckets and where each lives.
    #[command(after_help = "\
Examples:
  s3gate admin buckets list
  s3gate admin --json buckets list")]
    List,
    /// Delete a bucket: clients can no longer reach it. Its objects stay on
    /// the backend.
    #[command(after_help = "\
Example:
  s3gate admin buckets delete data")]
    Delete {
        /// The bucket name clients use (see `buckets list`).
        name: String,
    },
    /// Set the backend serving bucket names no entry matches (clients may
    /// then create and use any bucket there that policy allows), or turn
    /// it off.
    #[command(after_help = "\
Examples:
  s3gate admin buckets default minio
  s3gate admin buckets default --off")]
    Default {
        /// The backend (see `backends list`).
        #[arg(required_unless_present = "off", conflicts_with = "off")]
        backend: Option<String>,
        /// No default backend: names no entry matches do not exist.
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List live sessions: access key, principal, role, expiry (never a
    /// secret or a session token).
    #[command(after_help = "\
EXPIRES is in RFC 3339, UTC.

Examples:
  s3gate admin sessions list
  s3gate admin sessions list --principal alice@example.com
  s3gate admin --json sessions list")]
    List {
        /// Only this principal's sessions.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Revoke one session, or every session of a principal: requests signed
    /// with them are refused at every data plane within a second.
    #[command(after_help = "\
Examples:
  s3gate admin sessions revoke --access-key ASIAEXAMPLEKEY000000
  s3gate admin sessions revoke --principal alice@example.com")]
    Revoke {
        /// The session's access key (see `sessions list`).
        #[arg(
            long,
            required_unless_present = "principal",
            conflicts_with = "principal"
        )]
        access_key: Option<String>,
        /// Every session of this principal.
        #[arg(long)]
        principal: Option<String>,
    },
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// Whose request: the principal of this access key ...
    #[arg(long, conflicts_with = "principal")]
    access_key: Option<String>,
    /// ... or a principal by name (with its groups in --group). Neither:
    /// an anonymous request.
    #[arg(long)]
    principal: Option<String>,
    /// A group of --principal. Repeatable.
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// How the principal authenticated, as policy sources see it [default:
    /// key; anonymous without --access-key or --principal].
    #[arg(long = "identity", value_name = "SOURCE", value_parser = ["key", "sts", "jwt", "mtls", "anonymous"])]
    identity_source: Option<String>,
    /// The S3 IAM action, e.g. s3:GetObject, s3:PutObject, s3:ListBucket.
    #[arg(long)]
    action: String,
    /// The bucket, as clients name it.
    #[arg(long)]
    bucket: String,
    /// An object key: the request is about that object.
    #[arg(long, conflicts_with = "prefix")]
    key: Option<String>,
    /// A listed prefix: the request lists it. Neither --key nor --prefix:
    /// the request is about the bucket itself.
    #[arg(long)]
    prefix: Option<String>,
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let token = match args.token.as_deref() {
        Some(t) if !t.is_empty() => t,
        _ => bail!(
            "no admin token: pass --token TOKEN or set S3GATE_ADMIN_TOKEN to the token the \
             control plane was started with (its --admin-token)"
        ),
    };
    let token = format!("Bearer {token}")
        .parse()
        .map(BearerToken)
        .context("the admin token is not a valid header value")?;
    let channel = connect(&args.url).await?;
    let client = AdminClient::with_interceptor(channel, token);
    let url = args.url.clone();
    execute(client, args)
        .await
        .map_err(|e| match e.downcast::<Status>() {
            Ok(status) => anyhow!(status_message(&status, &url)),
            Err(other) => other,
        })
}

type Client = AdminClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <admin token>` to every call.
#[derive(Clone)]
struct BearerToken(MetadataValue<Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Connects to the control plane at `url`; the errors say what to check.
async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = endpoint(url)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(anyhow!(unreachable_message(url, &e))),
        Err(_) => bail!(
            "no answer from the control plane at {url} within {}s\n{CHECK_URL}",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// The endpoint of a control-plane URL, which must be `http://HOST:PORT`:
/// control planes serve plain gRPC.
fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let split = url
        .split_once("://")
        .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest));
    match split
        .as_ref()
        .map(|(scheme, rest)| (scheme.as_str(), *rest))
    {
        Some(("http", _)) => {}
        Some(("https", rest)) => bail!(
            "control-plane URL {url:?}: https is not supported, control planes serve plain \
             gRPC; use http://{rest}"
        ),
        Some((other, _)) => bail!(
            "control-plane URL {url:?} has scheme {other}://; it needs http://, \
             as in http://127.0.0.1:9090"
        ),
        None => {
            bail!("control-plane URL {url:?} needs http:// in front: --control-plane http://{url}")
        }
    }
    Endpoint::from_shared(url.to_owned())
        .map(|e| e.timeout(CALL_TIMEOUT))
        .map_err(|e| {
            anyhow!(
                "control-plane URL {url:?} is not a valid URL ({e}); \
                 it looks like http://HOST:PORT"
            )
        })
}

/// Why connecting to `url` failed, and what to check.
fn unreachable_message(url: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let cause = innermost(error);
    let what = match cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        _ => cause.to_string(),
    };
    format!("cannot reach the control plane at {url}: {what}\n{CHECK_URL}")
}

/// The transport nests its errors ("tcp connect error: tcp connect error:
/// Connection refused"): the innermost one says what happened.
fn innermost<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause
}

/// What an Admin call's failure means for the person who typed it.
fn status_message(status: &Status, url: &str) -> String {
    let message = status.message();
    // Not a gRPC server: an HTTP answer without a gRPC status (tonic maps
    // its HTTP status to a code: 404 to Unimplemented, 401 to
    // Unauthenticated), or a local h2/hyper error.
    let transport_error = matches!(status.code(), Code::Internal | Code::Unknown)
        && std::error::Error::source(status).is_some();
    if message.starts_with("grpc-status header missing") {
        return format!("the server at {url} does not answer gRPC ({message})\n{CHECK_URL}");
    }
    if transport_error {
        let cause = innermost(status);
        return format!("the server at {url} does not answer gRPC ({cause})\n{CHECK_URL}");
    }
    match status.code() {
        Code::Unauthenticated if message.ends_with("not accepted") => format!(
            "the control plane at {url} did not accept the admin token\n\
             Use the token it was started with (its --admin-token or S3GATE_ADMIN_TOKEN), \
             in --token or S3GATE_ADMIN_TOKEN."
        ),
        Code::Unauthenticated => format!(
            "the control plane at {url} wants an admin token ({message})\n\
             Pass --token or set S3GATE_ADMIN_TOKEN."
        ),
        Code::Unimplemented => format!(
            "the control plane at {url} does not serve the Admin API\n\
             Start it with --admin-token (`s3gate serve` also needs --grpc-listen)."
        ),
        Code::DeadlineExceeded => format!(
            "no answer from the control plane at {url} within {}s (a change may or may not \
             have been made)\n{CHECK_URL}",
            CALL_TIMEOUT.as_secs()
        ),
        // A store outage says so itself ("state store unavailable, change
        // not made"); anything else unavailable is the connection.
        Code::Unavailable | Code::Cancelled if !message.starts_with("state store") => {
            format!("lost the connection to the control plane at {url} ({message})\n{CHECK_URL}")
        }
        // The control plane's own words: what was not found ("rule \"x\""),
        // why a change is invalid.
        Code::NotFound => format!("not found: {message}"),
        Code::InvalidArgument => format!("refused: {message}"),
        _ if !message.is_empty() => message.to_owned(),
        code => format!("the control plane at {url} failed: {code:?}"),
    }
}

async fn execute(mut client: Client, args: AdminArgs) -> anyhow::Result<()> {
    let out = Output { json: args.json };
    match args.command {
        AdminCommand::Keys { command } => match command {
            KeysCommand::Create {
                principal,
                groups,
                access_key,
            } => {
                let k = client
                    .create_key(pb::CreateKeyRequest {
                        principal,
                        groups,
                        access_key: access_key.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                out.key_with_secret(&k);
            }
            KeysCommand::List => {
                let keys = client
                    .list_keys(pb::ListKeysRequest {})
                    .await?
                    .into_inner()
                    .keys;
                out.table(
                    &["ACCESS KEY", "PRINCIPAL", "GROUPS", "CREATED"],
                    keys.iter()
                        .map(|k| {
                            vec![
                                k.access_key.clone(),
                                k.principal.clone(),
                                k.groups.join(","),
                                created_text(k.created),
                            ]
                        })
                        .collect(),
                    json!(keys.iter().map(key_json).collect::<Vec<_>>()),
                );
            }
            KeysCommand::Revoke { access_key } => {
                let r = client
                    .revoke_key(pb::RevokeKeyRequest { access_key })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
            KeysCommand::Rotate { access_key } => {
                let k = client
                    .rotate_key(pb::RotateKeyRequest { access_key })
                    .await?
                    .into_inner();
                out.key_with_secret(&k);
            }
        },
        AdminCommand::Rules { command } => match command {
            RulesCommand::Put {
                id,
                effect,
                principals,
                actions,
                resources,
            } => {
                let effect = match effect.as_str() {
                    "allow" => pb::Effect::Allow,
                    "deny" => pb::Effect::Deny,
                    other => bail!("--effect must be allow or deny, not {other:?}"),
                };
                let rule = pb::Rule {
                    id,
                    effect: effect as i32,
                    principals,
                    actions,
                    resources,
                };
                let r = client
                    .put_rule(pb::PutRuleRequest { rule: Some(rule) })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
            RulesCommand::List => {
                let rules = client
                    .list_rules(pb::ListRulesRequest {})
                    .await?
                    .into_inner()
                    .rules;
                let effect = |e: i32| match pb::Effect::try_from(e) {
                    Ok(pb::Effect::Allow) => "allow",
                    Ok(pb::Effect::Deny) => "deny",
                    _ => "?",
                };
                out.table(
                    &["ID", "EFFECT", "PRINCIPALS", "ACTIONS", "RESOURCES"],
                    rules
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.clone(),
                                effect(r.effect).to_owned(),
                                r.principals.join(","),
                                r.actions.join(","),
                                r.resources.join(","),
                            ]
                        })
                        .collect(),
                    json!(rules
                        .iter()
                        .map(|r| json!({"id": r.id, "effect": effect(r.effect), "principals": r.principals,
                                         "actions": r.actions, "resources": r.resources}))
                        .collect::<Vec<_>>()),
                );
            }
            RulesCommand::Delete { id } => {
                let r = client
                    .delete_rule(pb::DeleteRuleRequest { id })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
        },
        AdminCommand::Backends { command } => match command {
            BackendsCommand::Put {
                name,
                endpoint,
                region,
                addressing_style,
                kind,
                access_key,
                secret_key_env,
                session_token_env,
                ibm_api_key_env,
                iam_endpoint,
                service_instance_id,
                role_arn,
                sts_endpoint,
                sts_region,
                duration,
                session_name,
                external_id,
                credentials_ca_bundle,
                ca_bundle,
                insecure_skip_verify,
                key_segment_guard,
                proxy,
                no_proxy,
                proxy_credentials,
                max_connections,
                connect_timeout,
                response_timeout,
            } => {
                let egress = s3gate_proto::Egress {
                    proxy,
                    no_proxy,
                    proxy_credentials,
                };
                let limits = s3gate_proto::BackendLimits {
                    max_connections,
                    connect_timeout,
                    response_timeout,
                };
                if let Err(m) = egress.validate().and_then(|()| limits.validate()) {
                    bail!("{m}");
                }
                let style = match addressing_style.as_str() {
                    "path" => pb::AddressingStyle::Path,
                    "virtual" => pb::AddressingStyle::Virtual,
                    other => bail!("--addressing-style must be path or virtual, not {other:?}"),
                };
                let from_env = |var: Option<String>| match var {
                    Some(var) => std::env::var(&var)
                        .with_context(|| format!("environment variable {var} is not set")),
                    None => Ok(String::new()),
                };
                // A flag of another kind is a mistake worth saying.
                let given = |flag: &str, set: bool, kinds: &[&str]| {
                    if set && !kinds.contains(&kind.as_str()) {
                        bail!("{flag} does not apply to --kind {kind}");
                    }
                    Ok(())
                };
                given(
                    "--access-key",
                    access_key.is_some(),
                    &["static_hmac", "aws_assume_role"],
                )?;
                given(
                    "--secret-key-env",
                    secret_key_env.is_some(),
                    &["static_hmac", "aws_assume_role"],
                )?;
                given(
                    "--session-token-env",
                    session_token_env.is_some(),
                    &["static_hmac", "aws_assume_role"],
                )?;
                given("--ibm-api-key-env", ibm_api_key_env.is_some(), &["ibm_iam"])?;
                given("--iam-endpoint", iam_endpoint.is_some(), &["ibm_iam"])?;
                given(
                    "--service-instance-id",
                    service_instance_id.is_some(),
                    &["ibm_iam"],
                )?;
                for (flag, set) in [
                    ("--role-arn", role_arn.is_some()),
                    ("--sts-endpoint", sts_endpoint.is_some()),
                    ("--sts-region", sts_region.is_some()),
                    ("--duration", duration.is_some()),
                    ("--session-name", session_name.is_some()),
                    ("--external-id", external_id.is_some()),
                ] {
                    given(flag, set, &["aws_assume_role"])?;
                }
                given(
                    "--credentials-ca-bundle",
                    credentials_ca_bundle.is_some(),
                    &["ibm_iam", "aws_assume_role"],
                )?;
                use pb::credential_spec::Kind;
                let kind = match kind.as_str() {
                    "ibm_iam" => Kind::IbmIam(pb::IbmIamSpec {
                        api_key: from_env(ibm_api_key_env)?,
                        iam_endpoint: iam_endpoint.unwrap_or_default(),
                        service_instance_id: service_instance_id.unwrap_or_default(),
                        ca_bundle: credentials_ca_bundle.unwrap_or_default(),
                    }),
                    "aws_assume_role" => Kind::AwsAssumeRole(pb::AwsAssumeRoleSpec {
                        role_arn: role_arn.context("--kind aws_assume_role needs --role-arn")?,
                        access_key: access_key
                            .context("--kind aws_assume_role needs --access-key")?,
                        secret_key: from_env(secret_key_env)?,
                        session_token: from_env(session_token_env)?,
                        sts_endpoint: sts_endpoint.unwrap_or_default(),
                        duration_seconds: duration.map_or(0, |d| d.as_secs()),
                        session_name: session_name.unwrap_or_default(),
                        external_id: external_id.unwrap_or_default(),
                        ca_bundle: credentials_ca_bundle.unwrap_or_default(),
                        sts_region: sts_region.unwrap_or_default(),
                    }),
                    _ => Kind::StaticHmac(pb::StaticHmacSpec {
                        access_key: access_key.context("--kind static_hmac needs --access-key")?,
                        secret_key: from_env(secret_key_env)?,
                        session_token: from_env(session_token_env)?,
                    }),
                };
                let credentials = pb::CredentialSpec { kind: Some(kind) };
                let req = pb::PutBackendRequest {
                    backend: Some(pb::BackendInfo {
                        name,
                        endpoint,
                        region,
                        addressing_style: style as i32,
                        access_key: String::new(),
                        ca_bundle: ca_bundle.unwrap_or_default(),
                        insecure_skip_verify,
                        credentials: Some(credentials),
                        literal_keys: !key_segment_guard,
                        egress: Some(pb::BackendEgress::from(&egress)),
                        limits: Some(pb::BackendLimits::from(&limits)),
                    }),
                    secret_key: String::new(),
                    session_token: String::new(),
                };
                let r = client.put_backend(req).await?.into_inner();
                out.changed(r.version);
            }
            BackendsCommand::List => {
                let backends = client
                    .list_backends(pb::ListBackendsRequest {})
                    .await?
                    .into_inner()
                    .backends;
                let style = |s: i32| match pb::AddressingStyle::try_from(s) {
                    Ok(pb::AddressingStyle::Virtual) => "virtual",
                    _ => "path",
                };
                out.table(
                    &["NAME", "ENDPOINT", "REGION", "STYLE", "ACCESS KEY", "KIND"],
                    backends
                        .iter()
                        .map(|b| {
                            vec![
                                b.name.clone(),
                                b.endpoint.clone(),
                                b.region.clone(),
                                style(b.addressing_style).to_owned(),
                                b.access_key.clone(),
                                credential_kind(b)["kind"].as_str().unwrap_or("-").to_owned(),
                            ]
                        })
                        .collect(),
                    json!(backends
                        .iter()
                        .map(|b| json!({"name": b.name, "endpoint": b.endpoint, "region": b.region,
                                         "addressing_style": style(b.addressing_style), "access_key": b.access_key,
                                         "credentials": credential_kind(b),
                                         "ca_bundle": b.ca_bundle, "insecure_skip_verify": b.insecure_skip_verify,
                                         "key_segment_guard": !b.literal_keys,
                                         "egress": egress_json(b), "limits": limits_json(b)}))
                        .collect::<Vec<_>>()),
                );
            }
            BackendsCommand::Delete { name } => {
                let r = client
                    .delete_backend(pb::DeleteBackendRequest { name })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
        },
        AdminCommand::Buckets { command } => match command {
            BucketsCommand::Put {
                name,
                backend,
                backend_bucket,
                cors_file,
                credentials_plugin,
                credentials_sql_query,
                credentials_sql_url,
                credentials_timeout,
            } => {
                let cors = match cors_file {
                    Some(path) => {
                        let text = std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        cors_rules_from_json(&text).with_context(|| {
                            format!("{}: not a list of CORS rules", path.display())
                        })?
                    }
                    None => Vec::new(),
                };
                let bucket = pb::BucketInfo {
                    name,
                    backend,
                    backend_bucket: backend_bucket.unwrap_or_default(),
                    cors,
                    credentials: match (credentials_plugin, credentials_sql_query) {
                        (Some(url), _) => Some(pb::BucketCredentialSource {
                            kind: "plugin".into(),
                            url,
                            timeout_ms: credentials_timeout.as_millis() as u64,
                            ..Default::default()
                        }),
                        (None, Some(query)) => Some(pb::BucketCredentialSource {
                            kind: "sql".into(),
                            url: credentials_sql_url.unwrap_or_default(),
                            query,
                            timeout_ms: credentials_timeout.as_millis() as u64,
                            per_principal: false,
                        }),
                        (None, None) => None,
                    },
                };
                let r = client
                    .put_bucket(pb::PutBucketRequest {
                        bucket: Some(bucket),
                    })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
            BucketsCommand::Default { backend, off: _ } => {
                let r = client
                    .set_default_backend(pb::SetDefaultBackendRequest {
                        backend: backend.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
            BucketsCommand::List => {
                let listed = client
                    .list_buckets(pb::ListBucketsRequest {})
                    .await?
                    .into_inner();
                let (buckets, default_backend) = (listed.buckets, listed.default_backend);
                out.table(
                    &["NAME", "BACKEND", "BACKEND BUCKET", "CORS", "CREDENTIALS"],
                    buckets
                        .iter()
                        .map(|b| {
                            vec![
                                b.name.clone(),
                                b.backend.clone(),
                                b.backend_bucket.clone(),
                                cors_summary(&b.cors),
                                b.credentials.as_ref().map_or_else(
                                    || "backend".to_owned(),
                                    bucket_credentials_summary,
                                ),
                            ]
                        })
                        .collect(),
                    json!(buckets
                        .iter()
                        .map(|b| {
                            let mut v = json!({"name": b.name, "backend": b.backend, "backend_bucket": b.backend_bucket,
                                               "cors": b.cors.iter().map(cors_rule_json).collect::<Vec<_>>()});
                            if let Some(c) = &b.credentials {
                                v["credentials"] = json!({"kind": c.kind, "url": c.url, "query": c.query,
                                                          "timeout_ms": c.timeout_ms, "per_principal": c.per_principal});
                            }
                            v
                        })
                        .collect::<Vec<_>>()),
                );
                if !out.json {
                    // (`admin --json status` has it as `default_backend`.)
                    println!(
                        "default backend: {}",
                        if default_backend.is_empty() {
                            "off"
                        } else {
                            &default_backend
                        }
                    );
                }
            }
            BucketsCommand::Delete { name } => {
                let r = client
                    .delete_bucket(pb::DeleteBucketRequest { name })
                    .await?
                    .into_inner();
                out.changed(r.version);
            }
        },
        AdminCommand::Sessions { command } => match command {
            SessionsCommand::List { principal } => {
                let sessions = client
                    .list_sessions(pb::ListSessionsRequest {
                        principal: principal.unwrap_or_default(),
                    })
                    .await?
                    .into_inner()
                    .sessions;
                out.table(
                    &["ACCESS KEY", "PRINCIPAL", "ROLE", "SESSION", "EXPIRES"],
                    sessions
                        .iter()
                        .map(|s| {
                            vec![
                                s.access_key.clone(),
                                s.principal.clone(),
                                s.role_arn.clone(),
                                s.session_name.clone(),
                                rfc3339(s.expires).unwrap_or_else(|| s.expires.to_string()),
                            ]
                        })
                        .collect(),
                    json!(sessions.iter().map(session_json).collect::<Vec<_>>()),
                );
            }
            SessionsCommand::Revoke {
                access_key,
                principal,
            } => {
                use pb::revoke_sessions_request::Target;
                let (target, by_key) = match (access_key, principal) {
                    (Some(ak), _) => (Target::AccessKey(ak), true),
                    (None, Some(p)) => (Target::Principal(p), false),
                    (None, None) => bail!("give --access-key or --principal"),
                };
                let revoked = client
                    .revoke_sessions(pb::RevokeSessionsRequest {
                        target: Some(target),
                    })
                    .await?
                    .into_inner()
                    .access_keys;
                if by_key && revoked.is_empty() {
                    bail!("not found: no live session has this access key");
                }
                if out.json {
                    println!("{}", json!({ "revoked": revoked }));
                } else if revoked.is_empty() {
                    println!("no live session to revoke");
                } else {
                    println!(
                        "revoked {} session(s): {}",
                        revoked.len(),
                        revoked.join(", ")
                    );
                }
            }
        },
        AdminCommand::Explain(e) => {
            let (kind, key) = match (e.key, e.prefix) {
                (Some(k), _) => (pb::ResourceKind::Object, k),
                (None, Some(p)) => (pb::ResourceKind::Prefix, p),
                (None, None) => (pb::ResourceKind::Bucket, String::new()),
            };
            let principal = e.principal.map(|name| pb::Principal {
                name,
                groups: e.groups,
                access_key: String::new(),
                anonymous: false,
            });
            let r = client
                .explain(pb::ExplainRequest {
                    access_key: e.access_key.unwrap_or_default(),
                    principal,
                    action: e.action,
                    bucket: e.bucket,
                    kind: kind as i32,
                    key,
                    identity_source: e.identity_source.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let who = r
                .principal
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default();
            let scope_text = |scope: i32, prefix: &str| match pb::Scope::try_from(scope) {
                Ok(pb::Scope::Exact) => "exact".to_owned(),
                Ok(pb::Scope::Prefix) => format!("prefix {prefix:?}"),
                Ok(pb::Scope::Bucket) => "bucket".to_owned(),
                _ => "-".to_owned(),
            };
            if out.json {
                let sources: Vec<Value> = r
                    .sources
                    .iter()
                    .map(|a| {
                        json!({"source": a.source, "verdict": a.verdict, "reason": a.reason,
                               "by": a.by, "scope": scope_text(a.scope, &a.scope_prefix),
                               "scope_prefix": a.scope_prefix, "ttl_ms": a.ttl_ms})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"allow": r.allow, "reason": r.reason, "rule": r.rule, "principal": who,
                           "identity": r.identity_source, "decided_by": r.decided_by,
                           "scope": scope_text(r.scope, &r.scope_prefix), "scope_prefix": r.scope_prefix,
                           "ttl_ms": r.ttl_ms, "unavailable": r.unavailable, "sources": sources})
                );
            } else {
                let verdict = if r.unavailable {
                    "UNAVAILABLE (503)"
                } else if r.allow {
                    "ALLOW"
                } else {
                    "DENY"
                };
                println!(
                    "{verdict} ({}) for principal {who} (identity: {})",
                    r.reason, r.identity_source
                );
                if !r.unavailable {
                    println!(
                        "  decided by: {}; cached: scope {}, ttl {}ms",
                        if r.decided_by.is_empty() {
                            "no source allowed it"
                        } else {
                            &r.decided_by
                        },
                        scope_text(r.scope, &r.scope_prefix),
                        r.ttl_ms
                    );
                }
                for a in &r.sources {
                    let by = if a.by.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", a.by)
                    };
                    if a.verdict == "error" {
                        println!("  {:<8} error: {}", a.source, a.reason);
                    } else {
                        println!(
                            "  {:<8} {:<7} {}{by}; scope {}, ttl {}ms",
                            a.source,
                            a.verdict,
                            a.reason,
                            scope_text(a.scope, &a.scope_prefix),
                            a.ttl_ms
                        );
                    }
                }
            }
        }
        AdminCommand::Reload => {
            let r = client.reload(pb::ReloadRequest {}).await?.into_inner();
            let counts = |c: Option<pb::ReloadCounts>| {
                let c = c.unwrap_or_default();
                json!({"added": c.added, "removed": c.removed, "changed": c.changed})
            };
            let from_file = r.state_from == "file";
            if out.json {
                let mut v = json!({"config_file": r.config_file, "policy": r.policy,
                       "identity": r.identity, "invalidated": r.invalidated,
                       "state_from": r.state_from, "state_version": r.state_version,
                       "cache_changed": r.cache_changed, "restart_needed": r.restart_needed});
                if from_file {
                    v["keys"] = counts(r.keys);
                    v["rules"] = counts(r.rules);
                    v["backends"] = counts(r.backends);
                    v["buckets"] = counts(r.buckets);
                    v["default_backend_changed"] = json!(r.default_backend_changed);
                }
                println!("{v}");
            } else {
                println!("reloaded {}", r.config_file);
                for (i, p) in r.policy.iter().enumerate() {
                    println!("policy[{i}]   {p}");
                }
                for (i, p) in r.identity.iter().enumerate() {
                    println!("identity[{i}] {p}");
                }
                if from_file {
                    let line = |c: Option<pb::ReloadCounts>| {
                        let c = c.unwrap_or_default();
                        format!(
                            "{} added, {} removed, {} changed",
                            c.added, c.removed, c.changed
                        )
                    };
                    println!("keys         {}", line(r.keys));
                    println!("rules        {}", line(r.rules));
                    println!("backends     {}", line(r.backends));
                    println!("buckets      {}", line(r.buckets));
                    if r.default_backend_changed {
                        println!("default_backend changed");
                    }
                } else {
                    println!(
                        "state        kept: the {} is its source of truth (change it with `s3gate admin`)",
                        r.state_from
                    );
                }
                if r.cache_changed {
                    println!("cache TTLs   changed");
                }
                println!("state version {}", r.state_version);
                println!("invalidated  {}", r.invalidated);
                if !r.restart_needed.is_empty() {
                    println!(
                        "restart needed for: {} (changed in the file; the running values stay)",
                        r.restart_needed.join(", ")
                    );
                }
            }
        }
        AdminCommand::Status => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            let v = json!({
                "version": s.version, "replica": s.replica, "state_version": s.state_version,
                "store": s.store, "store_healthy": s.store_healthy, "store_error": s.store_error,
                "keys": s.keys, "rules": s.rules, "backends": s.backends, "buckets": s.buckets,
                "replicas_seen": s.replicas_seen,
                "default_backend": if s.default_backend.is_empty() { Value::Null } else { json!(s.default_backend) },
            });
            if out.json {
                println!("{v}");
            } else if let Value::Object(map) = v {
                for (k, v) in map {
                    println!(
                        "{k:<14} {}",
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    );
                }
            }
        }
    }
    Ok(())
}

/// A bucket's credential source in one cell (the URL comes redacted).
fn bucket_credentials_summary(c: &pb::BucketCredentialSource) -> String {
    let url = if c.url.is_empty() {
        "(default database)"
    } else {
        c.url.as_str()
    };
    match c.kind.as_str() {
        "sql" => format!(
            "sql {url}{}",
            if c.per_principal {
                " per-principal"
            } else {
                ""
            }
        ),
        kind => format!("{kind} {url}"),
    }
}

/// A key as JSON: `created` in Unix seconds (0 for keys seeded from a config
/// file), `created_at` the same in RFC 3339 (null for those).
fn key_json(k: &pb::KeyInfo) -> Value {
    json!({"access_key": k.access_key, "principal": k.principal, "groups": k.groups,
           "created": k.created, "created_at": rfc3339(k.created)})
}

/// A session as JSON (never its secret or token): times in Unix seconds,
/// `expires_at` in RFC 3339.
fn session_json(s: &pb::SessionInfo) -> Value {
    json!({"access_key": s.access_key, "principal": s.principal, "groups": s.groups,
           "role_arn": s.role_arn, "session_name": s.session_name, "subject": s.subject,
           "provider": s.provider, "created": s.created, "expires": s.expires,
           "expires_at": rfc3339(s.expires)})
}

/// When a key was created, for a table: RFC 3339 UTC, or "from config"
/// for keys seeded from a config file (they carry no creation time).
fn created_text(unix: i64) -> String {
    if unix == 0 {
        return "from config".to_owned();
    }
    rfc3339(unix).unwrap_or_else(|| unix.to_string())
}

/// Unix seconds in RFC 3339 UTC; `None` for 0 (no time) and for what it
/// cannot show (before 1970, after 9999).
fn rfc3339(unix: i64) -> Option<String> {
    // humantime formats years up to 9999 and fails beyond.
    const YEAR_10000: u64 = 253_402_300_800;
    let secs = u64::try_from(unix)
        .ok()
        .filter(|s| (1..YEAR_10000).contains(s))?;
    let time = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

struct Output {
    json: bool,
}

impl Output {
    fn changed(&self, version: u64) {
        if self.json {
            println!("{}", json!({ "version": version }));
        } else {
            println!("ok (state version {version})");
        }
    }

    fn key_with_secret(&self, k: &pb::KeyWithSecret) {
        let info = k.key.clone().unwrap_or_default();
        if self.json {
            let mut v = key_json(&info);
            v["secret_key"] = json!(k.secret_key);
            v["version"] = json!(k.version);
            println!("{v}");
        } else {
            println!("access key   {}", info.access_key);
            println!("secret key   {}", k.secret_key);
            println!("principal    {}", info.principal);
            println!("(the secret is shown only this once)");
        }
    }

    fn table(&self, header: &[&str], rows: Vec<Vec<String>>, json: Value) {
        if self.json {
            println!("{json}");
            return;
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}", w = *w))
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(header.iter().map(|h| h.to_string()).collect());
        for row in rows {
            line(row);
        }
    }
}

/// CORS rules from a `--cors-file`: a JSON array of rules named as in
/// `[[buckets.cors]]`, or S3's `{"CORSRules": [...]}` document (as `aws
/// s3api put-bucket-cors` takes it; a rule's `ID` is accepted and dropped).
/// The control plane checks the rules themselves.
fn cors_rules_from_json(text: &str) -> anyhow::Result<Vec<pb::CorsRule>> {
    let doc: Value = serde_json::from_str(text).context("invalid JSON")?;
    let (rules, s3_names) = match &doc {
        Value::Array(rules) => (rules, false),
        Value::Object(o) => match o.get("CORSRules") {
            Some(Value::Array(rules)) if o.len() == 1 => (rules, true),
            _ => bail!("expected an array of rules or {{\"CORSRules\": [...]}}"),
        },
        _ => bail!("expected an array of rules or {{\"CORSRules\": [...]}}"),
    };
    let names: [&str; 5] = if s3_names {
        [
            "AllowedOrigins",
            "AllowedMethods",
            "AllowedHeaders",
            "ExposeHeaders",
            "MaxAgeSeconds",
        ]
    } else {
        [
            "allowed_origins",
            "allowed_methods",
            "allowed_headers",
            "expose_headers",
            "max_age",
        ]
    };
    let [origins, methods, headers, expose, max_age] = names;
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let at = |m: String| anyhow!("rule {i}: {m}");
            let Value::Object(fields) = rule else {
                return Err(at("not an object".into()));
            };
            if let Some(unknown) = fields
                .keys()
                .find(|k| !(names.contains(&k.as_str()) || (s3_names && k.as_str() == "ID")))
            {
                return Err(at(format!(
                    "unknown field {unknown:?} (expected {})",
                    names.join(", ")
                )));
            }
            let list = |name: &str| -> anyhow::Result<Vec<String>> {
                match fields.get(name) {
                    None => Ok(Vec::new()),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| at(format!("{name}: expected strings")))
                        })
                        .collect(),
                    Some(_) => Err(at(format!("{name}: expected an array of strings"))),
                }
            };
            let max_age = match fields.get(max_age) {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or_else(|| at(format!("{max_age}: expected a number of seconds")))?,
                ),
            };
            Ok(pb::CorsRule {
                allowed_origins: list(origins)?,
                allowed_methods: list(methods)?,
                allowed_headers: list(headers)?,
                expose_headers: list(expose)?,
                max_age,
            })
        })
        .collect()
}

/// One line for a bucket's CORS rules in `buckets list`: each rule's
/// origins and methods; `-` when CORS is not enabled.
fn cors_summary(rules: &[pb::CorsRule]) -> String {
    if rules.is_empty() {
        return "-".to_owned();
    }
    rules
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.allowed_origins.join(","),
                r.allowed_methods.join(",")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn cors_rule_json(r: &pb::CorsRule) -> Value {
    json!({"allowed_origins": r.allowed_origins, "allowed_methods": r.allowed_methods,
           "allowed_headers": r.allowed_headers, "expose_headers": r.expose_headers,
           "max_age": r.max_age})
}

/// The kind of a listed backend's credential (its secrets are never listed).
fn credential_kind(b: &pb::BackendInfo) -> serde_json::Value {
    match b.credentials.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(pb::credential_spec::Kind::StaticHmac(s)) => {
            json!({"kind": "static_hmac", "access_key": s.access_key})
        }
        Some(pb::credential_spec::Kind::IbmIam(s)) => {
            json!({"kind": "ibm_iam", "iam_endpoint": s.iam_endpoint,
                   "service_instance_id": s.service_instance_id, "ca_bundle": s.ca_bundle})
        }
        Some(pb::credential_spec::Kind::AwsAssumeRole(s)) => {
            json!({"kind": "aws_assume_role", "role_arn": s.role_arn, "access_key": s.access_key,
                   "sts_endpoint": s.sts_endpoint, "sts_region": s.sts_region,
                   "duration_seconds": s.duration_seconds, "session_name": s.session_name,
                   "external_id": s.external_id, "ca_bundle": s.ca_bundle})
        }
        None => serde_json::Value::Null,
    }
}

/// A backend's egress proxy for `backends list --json` (credentials as
/// their `env:` reference).
fn egress_json(b: &pb::BackendInfo) -> serde_json::Value {
    let e = s3gate_proto::Egress::from(b.egress.clone().unwrap_or_default());
    json!({"proxy": e.proxy, "no_proxy": e.no_proxy, "proxy_credentials": e.proxy_credentials})
}

fn limits_json(b: &pb::BackendInfo) -> serde_json::Value {
    let l = s3gate_proto::BackendLimits::from(b.limits.unwrap_or_default());
    json!({"max_connections": l.max_connections,
           "connect_timeout": l.connect_timeout.map(|d| humantime::format_duration(d).to_string()),
           "response_timeout": humantime::format_duration(l.response_timeout).to_string()})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9090";

    #[test]
    fn cors_files_take_either_naming() {
        let ours = cors_rules_from_json(
            r#"[{"allowed_origins": ["https://app.example.com"], "allowed_methods": ["GET", "PUT"],
                 "allowed_headers": ["*"], "expose_headers": ["ETag"], "max_age": 600},
                {"allowed_origins": ["*"], "allowed_methods": ["GET"]}]"#,
        )
        .unwrap();
        let s3 = cors_rules_from_json(
            r#"{"CORSRules": [{"ID": "app", "AllowedOrigins": ["https://app.example.com"],
                 "AllowedMethods": ["GET", "PUT"], "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"],
                 "MaxAgeSeconds": 600}, {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]}"#,
        )
        .unwrap();
        assert_eq!(ours, s3);
        assert_eq!(ours[0].max_age, Some(600));
        assert_eq!(ours[1].max_age, None);
        assert!(ours[1].allowed_headers.is_empty());
        assert_eq!(
            cors_summary(&ours),
            "https://app.example.com GET,PUT; * GET"
        );
        assert_eq!(cors_summary(&[]), "-");
        let err = |text: &str| format!("{:#}", cors_rules_from_json(text).unwrap_err());
        assert!(err(r#"[{"allowed_origin": ["*"]}]"#)
            .contains("rule 0: unknown field \"allowed_origin\""));
        assert!(err(r#"[{"allowed_origins": "*"}]"#).contains("expected an array of strings"));
        assert!(
            err(r#"[{"allowed_origins": ["*"], "max_age": "10"}]"#).contains("number of seconds")
        );
        assert!(err(r#"{"rules": []}"#).contains("CORSRules"));
        assert!(err("nope").contains("invalid JSON"));
    }

    #[test]
    fn created_times_are_readable() {
        assert_eq!(created_text(0), "from config");
        assert_eq!(created_text(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(created_text(-5), "-5");
        assert_eq!(created_text(i64::MAX), i64::MAX.to_string());
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(1), Some("1970-01-01T00:00:01Z".to_owned()));
    }

    #[test]
    fn key_json_adds_created_at_and_keeps_created() {
        let key = |created| pb::KeyInfo {
            access_key: "AK".into(),
            principal: "alice".into(),
            groups: vec!["ops".into()],
            created,
        };
        assert_eq!(
            key_json(&key(1_700_000_000)),
            json!({"access_key": "AK", "principal": "alice", "groups": ["ops"],
                   "created": 1_700_000_000, "created_at": "2023-11-14T22:13:20Z"})
        );
        assert_eq!(key_json(&key(0))["created_at"], Value::Null);
    }

    fn endpoint_error(url: &str) -> String {
        endpoint(url)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn control_plane_urls_need_http() {
        assert!(endpoint(URL).is_ok());
        assert!(endpoint("HTTP://localhost:9090").is_ok());
        assert_eq!(
            endpoint_error("127.0.0.1:9090"),
            "control-plane URL \"127.0.0.1:9090\" needs http:// in front: \
             --control-plane http://127.0.0.1:9090"
        );
        assert!(
            endpoint_error("https://cp:9090").contains("use http://cp:9090"),
            "{}",
            endpoint_error("https://cp:9090")
        );
        assert!(endpoint_error("grpc://cp:9090").contains("it needs http://"));
        assert!(endpoint_error("http://bad host:9090").contains("is not a valid URL"));
    }

    #[test]
    fn unreachable_says_where_and_what_to_check() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let m = unreachable_message(URL, &refused);
        assert_eq!(
            m,
            format!("cannot reach the control plane at {URL}: connection refused\n{CHECK_URL}")
        );
        let other = std::io::Error::other("failed to lookup address information");
        let m = unreachable_message(URL, &other);
        assert!(
            m.contains(": failed to lookup address information\nIs the control plane running"),
            "{m}"
        );
    }

    #[test]
    fn statuses_say_what_to_do() {
        let m = |s: Status| status_message(&s, URL);
        assert!(
            m(Status::unauthenticated("admin token not accepted")).starts_with(
                "the control plane at http://127.0.0.1:9090 did not accept the admin token"
            )
        );
        assert!(m(Status::unauthenticated("admin token required"))
            .contains("wants an admin token (admin token required)\nPass --token"));
        assert!(m(Status::unimplemented("")).contains("Start it with --admin-token"));
        let http404 = "grpc-status header missing, mapped from HTTP status code 404";
        assert_eq!(
            m(Status::unimplemented(http404)),
            format!("the server at {URL} does not answer gRPC ({http404})\n{CHECK_URL}")
        );
        assert_eq!(
            m(Status::not_found("rule \"r1\"")),
            "not found: rule \"r1\""
        );
        assert_eq!(
            m(Status::invalid_argument(
                "backend \"b\" is used by bucket \"data\""
            )),
            "refused: backend \"b\" is used by bucket \"data\""
        );
        let store = "state store unavailable, change not made: connection refused";
        assert_eq!(m(Status::unavailable(store)), store);
        assert!(m(Status::unavailable("transport error")).starts_with("lost the connection"));
        assert!(m(Status::cancelled("closed")).starts_with("lost the connection"));
        assert!(m(Status::deadline_exceeded("")).contains("within 30s"));
        assert_eq!(
            m(Status::internal("")),
            "the control plane at http://127.0.0.1:9090 failed: Internal"
        );
    }
}
