//! TLS settings and the rustls connector for the transport.

use std::sync::Arc;

use agentscale_core::{Error, Result};

use crate::transport::Tls;

/// TLS settings (PEM). Without a CA, `https://` URLs cannot be verified, so
/// `ca_pem` is required for TLS.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// CA certificate(s) that sign the server's certificate.
    pub ca_pem: Vec<u8>,
    /// Server name to verify (default: the URL's host).
    pub domain: Option<String>,
    /// Client certificate and key for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("domain", &self.domain)
            .field(
                "client_identity",
                &self.client_identity.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A rustls connector (ALPN `h2`) trusting `tls.ca_pem`, with the client
/// identity for mutual TLS if given.
pub(crate) fn tls_connector(tls: &TlsConfig, host: &str) -> Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::InvalidConfig(format!("tls: {what}: {e}"));
    if tls.ca_pem.is_empty() {
        return Err(Error::InvalidConfig("tls: ca_pem is required".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        let cert = cert.map_err(|e| bad("ca_pem", &e))?;
        roots.add(cert).map_err(|e| bad("ca_pem", &e))?;
        found += 1;
    }
    if found == 0 {
        return Err(Error::InvalidConfig(
            "tls: ca_pem holds no PEM certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", &e))?;
            if chain.is_empty() {
                return Err(Error::InvalidConfig(
                    "tls: client certificate holds no PEM certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client identity", &e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = tls.domain.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| bad("server name", &e))?;
    Ok(Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}
