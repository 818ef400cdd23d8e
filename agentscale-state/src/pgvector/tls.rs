//! TLS to PostgreSQL: `sslmode=verify-full` over rustls.

use std::sync::Arc;

use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Whether and how the connection to PostgreSQL is encrypted.
///
/// Only the two modes that mean something are offered: no TLS at all, or
/// TLS with the server's certificate checked against a CA *and* its name
/// checked against the URL's host (libpq's `verify-full`). libpq's
/// `prefer`, `require` and `verify-ca` would accept a server an attacker
/// can impersonate, so they are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PgSslMode {
    /// Plaintext (a server on the same host or a private network you trust).
    #[default]
    Disable,
    /// TLS required; the certificate must chain to
    /// [`ssl_root_cert_pem`](super::PgVectorConfig::ssl_root_cert_pem) and
    /// name the URL's host.
    VerifyFull,
}

/// The URL with libpq's `sslmode=verify-full` (which tokio-postgres does
/// not parse) turned into the mode it asks for; other `sslmode` values
/// that would weaken the check are refused.
pub(crate) fn split_sslmode(url: &str, configured: PgSslMode) -> Result<(String, PgSslMode)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), configured));
    };
    let mut mode = configured;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("sslmode=") {
            Some("verify-full") => mode = PgSslMode::VerifyFull,
            Some("disable") if configured == PgSslMode::Disable => {}
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "pgvector url sslmode={other} is not supported: use ssl_mode = \"verify-full\" \
                     (TLS with the certificate and host name checked) or \"disable\""
                )))
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

/// The TLS connector: trusts only `ca_pem` (required for verify-full). For
/// [`PgSslMode::Disable`] it is never used (the connection config says
/// `sslmode=disable`), so it trusts nothing.
pub(crate) fn connector(mode: PgSslMode, ca_pem: Option<&str>) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    if mode == PgSslMode::VerifyFull {
        let Some(ca) = ca_pem else {
            return Err(Error::InvalidConfig(
                "pgvector ssl_mode verify-full needs ssl_root_cert_pem (the CA that signs the server's certificate)"
                    .into(),
            ));
        };
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let cert = cert
                .map_err(|e| Error::InvalidConfig(format!("pgvector ssl_root_cert_pem is not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::InvalidConfig(format!("pgvector ssl_root_cert_pem: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::InvalidConfig(
                "pgvector ssl_root_cert_pem holds no PEM certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("pgvector tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// A TLS failure in `e`'s source chain, explained (a configuration problem,
/// not an outage).
pub(crate) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return Some(format!(
                "TLS handshake failed (check ssl_root_cert_pem and the URL's host name): {t}"
            ));
        }
        if let Some(t) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(format!(
                "TLS handshake failed (check ssl_root_cert_pem and the URL's host name): {t}"
            ));
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_in_the_url_sets_the_mode_and_weaker_modes_are_refused() {
        let (url, mode) = split_sslmode(
            "postgres://u@db:5432/x?sslmode=verify-full&application_name=a",
            PgSslMode::Disable,
        )
        .expect("verify-full");
        assert_eq!(mode, PgSslMode::VerifyFull);
        assert_eq!(url, "postgres://u@db:5432/x?application_name=a");
        for weak in ["require", "prefer", "verify-ca", "allow"] {
            let e = split_sslmode(&format!("postgres://db/x?sslmode={weak}"), PgSslMode::Disable)
                .expect_err(weak);
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
        }
        assert!(
            connector(PgSslMode::VerifyFull, None).is_err(),
            "verify-full needs a CA"
        );
    }
}
