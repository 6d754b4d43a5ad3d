//! The HTTPS listener's TLS: its certificate, replaced without a restart,
//! and client certificates (mTLS).
//!
//! The certificate and key live in a [`ServerCert`], the listener's
//! certificate resolver: every handshake takes the pair current at that
//! moment, so a reload reaches new connections and leaves established ones
//! alone. [`watch`] re-reads the files on SIGHUP and whenever their bytes
//! change; a new pair that does not load (not PEM, not a certificate, a key
//! that is not the certificate's) is refused with a log line saying why, and
//! the old pair keeps serving.
//!
//! With a client CA, client certificates are verified during the handshake
//! (rustls' WebPKI verifier): a chain that does not lead to the CA, or no
//! certificate when one is required, ends the handshake. What a verified
//! certificate means for a request is decided in `pipeline::authn`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
pub use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};
use x509_cert::der::Decode;

/// Whether the listener asks for client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; a connection without one is served (its requests sign,
    /// or are anonymous), one whose certificate does not verify is not.
    Optional,
    /// A connection without a verified client certificate is refused.
    Required,
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "unknown client auth {other:?}; expected none, optional or required"
            )),
        }
    }
}

/// Which name of a verified client certificate is its principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PrincipalFrom {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS name among the subject alternative names.
    SanDns,
    /// The first URI among the subject alternative names (a SPIFFE ID).
    SanUri,
    /// The first email address among the subject alternative names.
    SanEmail,
}

impl PrincipalFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cn => "cn",
            Self::SanDns => "san_dns",
            Self::SanUri => "san_uri",
            Self::SanEmail => "san_email",
        }
    }
}

impl FromStr for PrincipalFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cn" => Ok(Self::Cn),
            "san_dns" => Ok(Self::SanDns),
            "san_uri" => Ok(Self::SanUri),
            "san_email" => Ok(Self::SanEmail),
            other => Err(format!(
                "unknown principal source {other:?}; expected cn, san_dns, san_uri or san_email"
            )),
        }
    }
}

/// What the HTTPS listener is built from.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// A file of the TLS settings that cannot be used. `field` names the
/// setting (`cert`, `key`, `client_ca`), for a config error that says where.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
}

impl TlsError {
    /// The setting whose file this is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Read { field, .. } | Self::Invalid { field, .. } => field,
        }
    }

    fn invalid(field: &'static str, path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// The rustls configuration of the HTTPS listener: ALPN `h2` and
/// `http/1.1`, TLS 1.2 and 1.3, the certificate from `cert`, and a client
/// certificate verifier when `settings` asks for one.
pub fn server_config(
    settings: &TlsSettings,
    cert: Arc<ServerCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::invalid("cert", &settings.cert, e.to_string()))?;
    let builder = match (settings.client_auth, &settings.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::invalid(
                "client_ca",
                Path::new(""),
                "client certificates need a client CA",
            ))
        }
        (auth, Some(ca)) => {
            let roots = Arc::new(client_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required | ClientAuth::None => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::invalid("client_ca", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

/// The CA certificates of a PEM file, for verifying client certificates.
fn client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read("client_ca", path)?;
    let certs = certificates(&pem).map_err(|m| TlsError::invalid("client_ca", path, m))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            TlsError::invalid("client_ca", path, format!("not a CA certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// Every `CERTIFICATE` block of a PEM file; none is an error.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (a PEM `CERTIFICATE` block) in the file".to_owned());
    }
    Ok(certs)
}

// === ServerCert ===

/// The server's certificate and key, swapped whole when new files load.
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// What handshakes are answered with.
    current: RwLock<Arc<CertifiedKey>>,
    /// What the files held when last read, so an unchanged pair is not
    /// parsed again and a refused pair is refused (and logged) once.
    seen: Mutex<Seen>,
}

#[derive(PartialEq, Eq)]
enum Seen {
    Files { cert: Vec<u8>, key: Vec<u8> },
    Unreadable(String),
}

/// What a [`ServerCert::reload`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what they held last time.
    Unchanged,
    /// A new pair serves new connections.
    Loaded(CertSummary),
    /// The new pair does not load; the previous one keeps serving.
    Refused(TlsError),
}

/// What the log says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
}

impl ServerCert {
    /// Reads and checks the pair: the key must be the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<(Arc<Self>, CertSummary), TlsError> {
        let (cert_pem, key_pem) = (read("cert", cert)?, read("key", key)?);
        let (certified, summary) = certified_key(cert, &cert_pem, key, &key_pem)?;
        let this = Arc::new(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(Seen::Files {
                cert: cert_pem,
                key: key_pem,
            }),
        });
        Ok((this, summary))
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again and, when they changed (or `force`), loads
    /// them. Blocking file I/O: call it off the async workers.
    pub fn reload(&self, force: bool) -> Reload {
        let read_both = read("cert", &self.cert_path)
            .and_then(|cert| read("key", &self.key_path).map(|key| (cert, key)));
        let now = match &read_both {
            Ok((cert, key)) => Seen::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        {
            let mut seen = match self.seen.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if *seen == now && !force {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        let (cert_pem, key_pem) = match read_both {
            Ok(pair) => pair,
            Err(e) => return Reload::Refused(e),
        };
        match certified_key(&self.cert_path, &cert_pem, &self.key_path, &key_pem) {
            Ok((certified, summary)) => {
                let mut current = match self.current.write() {
                    Ok(c) => c,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *current = Arc::new(certified);
                Reload::Loaded(summary)
            }
            Err(e) => Reload::Refused(e),
        }
    }
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<(CertifiedKey, CertSummary), TlsError> {
    let chain = certificates(cert_pem).map_err(|m| TlsError::invalid("cert", cert_path, m))?;
    let summary = chain
        .first()
        .map(|leaf| summarize(leaf))
        .transpose()
        .map_err(|m| TlsError::invalid("cert", cert_path, m))?
        .unwrap_or_else(|| CertSummary {
            subject: String::new(),
            serial: String::new(),
            not_after: String::new(),
        });
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError::invalid(
            "key",
            key_path,
            format!(
                "no private key (a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block): {e}"
            ),
        )
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::invalid("key", key_path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // ring's keys always know their public half; a key that does not
        // is taken on trust, as rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok((certified, summary))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::invalid(
                "key",
                key_path,
                format!(
                    "the private key does not belong to the certificate in {}",
                    cert_path.display()
                ),
            ))
        }
        Err(e) => Err(TlsError::invalid("cert", cert_path, e.to_string())),
    }
}

/// Subject, serial and notAfter of a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary, String> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    Ok(CertSummary {
        subject: tbs.subject().to_string(),
        serial: hex::encode_upper(tbs.serial_number().as_bytes()),
        not_after: tbs.validity().not_after.to_string(),
    })
}

/// Re-reads the certificate and key on SIGHUP and whenever the files'
/// bytes change (checked every `every`), for the life of the process.
pub async fn watch(cert: Arc<ServerCert>, every: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            warn!(%error, "cannot watch SIGHUP; the TLS certificate reloads on file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match &mut hangup {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let c = cert.clone();
        // File reads and parsing stay off the request workers.
        let Ok(outcome) = tokio::task::spawn_blocking(move || c.reload(forced)).await else {
            continue;
        };
        let cause = if forced { "SIGHUP" } else { "file change" };
        match outcome {
            Reload::Unchanged => {}
            Reload::Loaded(s) => info!(
                cause,
                subject = %s.subject,
                serial = %s.serial,
                not_after = %s.not_after,
                "TLS certificate loaded; new connections get it"
            ),
            Reload::Refused(error) => warn!(
                cause,
                %error,
                "new TLS certificate refused; the previous one keeps serving"
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Test certificates made by `tests/fixtures/tls/make.py` (valid
    /// until 2099).
    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tls")
            .join(name)
    }

    fn copy(dir: &Path, from: &str, to: &str) {
        std::fs::copy(testdata(from), dir.join(to)).unwrap();
    }

    fn serial_of(cert: &ServerCert) -> String {
        let current = cert.current();
        summarize(current.end_entity_cert().unwrap())
            .unwrap()
            .serial
    }

    #[test]
    fn a_bad_new_pair_is_refused_and_the_old_one_keeps_serving() {
        let tmp = TempDir::new();
        let dir = tmp.0.clone();
        copy(&dir, "server.pem", "cert.pem");
        copy(&dir, "server-key.pem", "key.pem");
        let (cert, summary) =
            ServerCert::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
        let first = summary.serial.clone();
        assert_eq!(serial_of(&cert), first);
        assert!(matches!(cert.reload(false), Reload::Unchanged));

        // A certificate whose key is another one's.
        copy(&dir, "server2.pem", "cert.pem");
        match cert.reload(false) {
            Reload::Refused(e) => {
                assert_eq!(e.field(), "key");
                assert!(
                    e.to_string().contains("does not belong to the certificate"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(serial_of(&cert), first);
        // Refused once, not on every poll.
        assert!(matches!(cert.reload(false), Reload::Unchanged));

        // Not PEM at all.
        std::fs::write(dir.join("cert.pem"), b"hello").unwrap();
        match cert.reload(false) {
            Reload::Refused(e) => assert!(e.to_string().contains("no certificate"), "{e}"),
            other => panic!("{other:?}"),
        }
        // A PEM block that is no certificate.
        std::fs::write(
            dir.join("cert.pem"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        match cert.reload(false) {
            Reload::Refused(e) => {
                assert!(e.to_string().contains("not an X.509 certificate"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // A key file without a key.
        copy(&dir, "server2.pem", "cert.pem");
        std::fs::write(dir.join("key.pem"), b"").unwrap();
        match cert.reload(false) {
            Reload::Refused(e) => {
                assert_eq!(e.field(), "key");
                assert!(e.to_string().contains("no private key"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // A missing file.
        std::fs::remove_file(dir.join("key.pem")).unwrap();
        assert!(matches!(
            cert.reload(false),
            Reload::Refused(TlsError::Read { .. })
        ));
        assert_eq!(serial_of(&cert), first);

        // The matching pair loads.
        copy(&dir, "server2-key.pem", "key.pem");
        let Reload::Loaded(second) = cert.reload(false) else {
            panic!("the matching pair did not load");
        };
        assert_ne!(second.serial, first);
        assert_eq!(serial_of(&cert), second.serial);
        // SIGHUP loads even an unchanged pair.
        assert!(matches!(cert.reload(true), Reload::Loaded(_)));
    }

    #[test]
    fn startup_errors_name_the_setting() {
        let err = ServerCert::load(&testdata("nope.pem"), &testdata("server-key.pem")).unwrap_err();
        assert_eq!(err.field(), "cert");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        let err =
            ServerCert::load(&testdata("server.pem"), &testdata("server2-key.pem")).unwrap_err();
        assert_eq!(err.field(), "key");
        let (cert, _) =
            ServerCert::load(&testdata("server.pem"), &testdata("server-key.pem")).unwrap();
        let settings = TlsSettings {
            cert: testdata("server.pem"),
            key: testdata("server-key.pem"),
            client_ca: Some(testdata("server-key.pem")),
            client_auth: ClientAuth::Required,
        };
        let err = server_config(&settings, cert.clone()).unwrap_err();
        assert_eq!(err.field(), "client_ca");
        let settings = TlsSettings {
            client_ca: Some(testdata("ca.pem")),
            ..settings
        };
        let config = server_config(&settings, cert).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir()
                .join(format!("s3gate-tls-test-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
