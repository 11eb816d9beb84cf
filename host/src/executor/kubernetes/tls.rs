//! TLS on the worker endpoint (HTTP/1.1 over TLS 1.2/1.3, rustls on
//! aws-lc-rs).
//!
//! The scheduler serves the certificate and key the operator gives it as
//! files (a `kubernetes.io/tls` Secret mounted into its pod, as cert-manager
//! writes one), read again when they change, so a renewed certificate is
//! served without a restart. Workers trust exactly the CA certificates of a
//! ConfigMap mounted into their pods (public, not a secret), and nothing else:
//! a worker whose CA does not vouch for the endpoint's certificate, or for its
//! name, does not send its token.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// Where a worker's pod mounts the CA ConfigMap.
pub const CA_MOUNT: &str = "/var/run/sluice-endpoint-ca";
/// The ConfigMap key (and file name) of the CA certificates.
pub const CA_KEY: &str = "ca.crt";

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("{what} {path}: {detail}")]
    File {
        /// Which file.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: String,
        /// Why.
        source: rustls::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_error(what: &'static str, path: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// The certificates of a PEM file, at least one.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The certificate chain of `cert` with the key of `key`, checked to match.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates("the endpoint's certificate", cert)?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("the endpoint's private key", key, e))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Rustls {
        what: format!(
            "the endpoint's key {} and certificate {}",
            key.display(),
            cert.display()
        ),
        source,
    })
}

/// When the certificate and key files were last changed.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// When the files were last changed (a mounted Secret's files change when
/// the kubelet swaps in a renewed one).
fn stamp(cert: &Path, key: &Path) -> Stamp {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

/// The endpoint's certificate and key, read again at a handshake after
/// either file changed (a pair that does not load keeps the last good one,
/// and says why).
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    /// The files' stamp when last read, and the pair they held.
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = stamp(&self.cert, &self.key);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != now {
            match load_pair(&self.cert, &self.key) {
                Ok(pair) => {
                    tracing::info!(
                        "the worker endpoint serves the renewed certificate {}",
                        self.cert.display()
                    );
                    *current = (now, Arc::new(pair));
                }
                Err(e) => {
                    tracing::warn!("the worker endpoint keeps its previous certificate: {e}");
                    current.0 = now;
                }
            }
        }
        Some(current.1.clone())
    }
}

/// The endpoint's TLS configuration from the operator's certificate (chain)
/// and key files; fails naming the file that does not load.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let first = stamp(cert, key);
    let pair = load_pair(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_owned(),
        key: key.to_owned(),
        current: Mutex::new((first, Arc::new(pair))),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "the endpoint's TLS versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The standard (webpki) verification of the endpoint's certificate, which
/// also records that it refused one (so the worker does not ask again).
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    refused: Arc<AtomicBool>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|_| self.refused.store(true, Ordering::Relaxed))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A worker's TLS configuration: it trusts the CA certificates of `ca` (a
/// PEM file, the mounted ConfigMap's `ca.crt`) and no other; `refused` is
/// set once it refused the endpoint's certificate.
pub fn client_config(
    ca: &Path,
    refused: Arc<AtomicBool>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("the endpoint's CA", ca)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!("a CA certificate of {}", ca.display()),
            source,
        })?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| file_error("the endpoint's CA", ca, e))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "the worker's TLS versions".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recording { inner, refused }))
        .with_no_client_auth())
}

/// A listener handing the endpoint's router connections whose TLS handshake
/// is done (handshakes run concurrently, each within a deadline, so a slow
/// or failing client holds no other back).
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (sender, accepted) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while !sender.is_closed() {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!("the worker endpoint cannot accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // A closed channel: the endpoint has stopped.
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!("worker endpoint: TLS handshake with {peer}: {e}");
                        }
                        Err(_) => tracing::info!(
                            "worker endpoint: {peer} did not finish its TLS handshake within {}s",
                            HANDSHAKE.as_secs()
                        ),
                    }
                });
            }
        });
        Ok(Self { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended: serve what is open, accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
