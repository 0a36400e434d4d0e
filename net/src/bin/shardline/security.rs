//! The security flags and subcommands of `shardline` (docs/security.md), kept apart from the
//! main command file so that they merge cleanly with other work on it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use shardline_net::client::{ClientConfig, ClientTls};
use shardline_net::tls::ServerTlsConfig;

/// Client side TLS (every client command).
#[derive(Debug, Args)]
pub(crate) struct ClientTlsArgs {
    /// Connect with TLS, trusting the CA certificates in this PEM file
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for servers that require mutual TLS
    #[arg(long, global = true, value_name = "FILE", requires = "tls_client_key")]
    tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert
    #[arg(long, global = true, value_name = "FILE", requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
    /// Name to verify in the server certificate [default: the host of --addr]
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    pub(crate) fn is_set(&self) -> bool {
        self.tls_ca.is_some() || self.tls_client_cert.is_some() || self.tls_server_name.is_some()
    }

    /// Applies the flags to a client configuration.
    pub(crate) fn apply(&self, config: &mut ClientConfig) -> anyhow::Result<()> {
        let Some(ca) = &self.tls_ca else {
            if self.is_set() {
                bail!("--tls-client-cert and --tls-server-name need --tls-ca");
            }
            return Ok(());
        };
        let cert = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let mut tls = ClientTls::new(ca, cert)?;
        if let Some(name) = &self.tls_server_name {
            tls = tls.with_server_name(name)?;
        }
        config.tls = Some(tls);
        Ok(())
    }
}

/// Server side TLS (`serve`); overrides `[server.tls]` of the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeTlsArgs {
    /// Serve TLS with this certificate chain (PEM, leaf first) (server.tls.cert)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert (server.tls.key)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs: mutual TLS (server.tls.client_ca)
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
}

impl ServeTlsArgs {
    pub(crate) fn apply(&self, tls: &mut Option<ServerTlsConfig>) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let mut t = ServerTlsConfig::new(cert, key);
            if let Some(old) = tls.take() {
                t.client_ca = old.client_ca;
                t.handshake_timeout_ms = old.handshake_timeout_ms;
            }
            *tls = Some(t);
        }
        if let Some(ca) = &self.tls_client_ca {
            let t = tls
                .as_mut()
                .context("--tls-client-ca needs a server certificate (--tls-cert, --tls-key)")?;
            t.client_ca = Some(ca.clone());
        }
        Ok(())
    }
}
