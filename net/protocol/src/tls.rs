//! TLS settings shared by the server and the client (docs/security.md, "TLS").
//!
//! rustls 0.23 with the *ring* provider only (no aws-lc build), TLS 1.3 and 1.2 with rustls'
//! safe defaults. Certificates and keys are PEM files. Everything here is plain configuration
//! building: the server wraps accepted glommio streams with `futures-rustls`
//! (`server/tls.rs`), the client drives a `rustls::ClientConnection` over a blocking socket
//! (`client/tls.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

/// Why a TLS configuration could not be built. Always names the file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TlsConfigError {
    #[error("TLS: cannot read {what} from {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS: {0}")]
    Invalid(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Every certificate of a PEM file (a chain, or a CA bundle); at least one.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key", path, e))
}

fn root_store(path: &Path, what: &'static str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots
            .add(cert)
            .map_err(|e| file_error(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Server side (`[server.tls]` in the config file; `--tls-cert`, `--tls-key`,
/// `--tls-client-ca` on `shardline serve`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM: the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the server's private key.
    pub key: PathBuf,
    /// PEM: CAs that sign client certificates. Set = mutual TLS: a client without a certificate
    /// signed by one of them is refused during the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// A connection that has not finished its TLS handshake this long after accept is closed.
    #[serde(default = "handshake_timeout_ms_default")]
    pub handshake_timeout_ms: u64,
}

fn handshake_timeout_ms_default() -> u64 {
    10_000
}

impl ServerTlsConfig {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServerTlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout_ms: handshake_timeout_ms_default(),
        }
    }

    /// Loads the files and builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        let certs = load_certs(&self.cert, "server certificate")?;
        let key = load_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Invalid(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = root_store(ca, "client CA")?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| TlsConfigError::Invalid(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsConfigError::Invalid(format!("certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }
}

/// Client side: what [`crate::client::ClientConfig::tls`] holds. Built once, shared by every
/// connection of a client (`Arc`), compared by identity.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Name checked against the server certificate; `None` = the host part of the address
    /// connected to (an IP address is checked against the certificate's IP SANs).
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field(
                "client_cert",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Trusts the CAs in `ca_file` (PEM); with `client_cert` = (certificate chain, key) PEM files
    /// the client authenticates itself too (mutual TLS).
    pub fn new(
        ca_file: &Path,
        client_cert: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsConfigError> {
        let roots = root_store(ca_file, "CA")?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Invalid(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert, "client certificate")?, load_key(key)?)
                .map_err(|e| TlsConfigError::Invalid(format!("client certificate and key: {e}")))?,
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Checks the server certificate against `name` instead of the host connected to (for
    /// addresses the certificate does not list, e.g. a shard's direct address).
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsConfigError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsConfigError::Invalid(format!("server name '{name}': {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The name to verify for a connection to `addr` (`host:port`, `[v6]:port`).
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsConfigError> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h,
            None => addr,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| {
            TlsConfigError::Invalid(format!("'{host}' is not a valid TLS server name: {e}"))
        })
    }
}

/// The first bytes of a TLS alert record (content type 21, version 3.x): what a TLS server
/// answers to a client that spoke plain TCP to it.
pub fn looks_like_tls_alert(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x15 && bytes[1] == 0x03
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_comes_from_the_host_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).expect("write");
        let tls = ClientTls::new(&path, None).expect("client tls");
        let ip = tls.server_name_for("127.0.0.1:7070").expect("ip");
        assert!(matches!(ip, ServerName::IpAddress(_)), "{ip:?}");
        let v6 = tls.server_name_for("[::1]:7070").expect("v6");
        assert!(matches!(v6, ServerName::IpAddress(_)), "{v6:?}");
        let dns = tls.server_name_for("localhost:1").expect("dns");
        assert_eq!(dns, ServerName::try_from("localhost").expect("name"));
        let fixed = tls.with_server_name("broker.example").expect("name");
        assert_eq!(
            fixed.server_name_for("127.0.0.1:1").expect("fixed"),
            ServerName::try_from("broker.example").expect("name")
        );
    }

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let e = ClientTls::new(&missing, None).expect_err("missing");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = ClientTls::new(&empty, None).expect_err("empty");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let e = ServerTlsConfig::new(&empty, &empty)
            .build()
            .expect_err("server");
        assert!(e.to_string().contains("empty.pem"), "{e}");
    }
}
