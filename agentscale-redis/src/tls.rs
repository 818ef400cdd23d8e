//! TLS settings of a `rediss://` connection and the classification of TLS
//! failures.

use std::fmt;

use agentscale_core::config::Secret;
use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// TLS settings for a `rediss://` URL (rustls; TLS 1.2 and 1.3).
///
/// The server's certificate is always verified, and so is its name against
/// the URL's host: there is no switch to turn either off. Without
/// [`ca_pem`](Self::ca_pem) the operating system's trust store is used (a
/// managed Redis with a public certificate); with it, only that CA is
/// trusted. PEM values are the file *contents*; through the config loader
/// set them from mounted files with the `_FILE` convention, e.g.
/// `AGENTSCALE_REDIS__TLS__CLIENT_KEY_PEM_FILE=/var/run/secrets/redis/tls.key`.
/// `Debug` prints sizes, never the key.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisTlsConfig {
    /// CA certificate(s), PEM, that sign the server's certificate (replaces
    /// the system trust store).
    pub ca_pem: Option<String>,
    /// Client certificate chain, PEM, for mutual TLS (`tls-auth-clients yes`).
    pub client_cert_pem: Option<String>,
    /// Private key of the client certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub client_key_pem: Option<Secret>,
}

impl fmt::Debug for RedisTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(String::len))
            .field(
                "client_cert_pem_bytes",
                &self.client_cert_pem.as_ref().map(String::len),
            )
            .field("client_key_pem", &self.client_key_pem)
            .finish()
    }
}

impl RedisTlsConfig {
    /// Whether any setting is present.
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.client_cert_pem.is_some() || self.client_key_pem.is_some()
    }

    /// Checks that the client certificate and key come together and that
    /// every PEM holds what it should (without echoing any of it).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidConfig(format!("redis tls: {m}")));
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        if let Some(ca) = &self.ca_pem {
            let n = CertificateDer::pem_slice_iter(ca.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::InvalidConfig(format!("redis tls: ca_pem is not PEM: {e}")))?
                .len();
            if n == 0 {
                return bad("ca_pem holds no PEM certificate");
            }
        }
        match (&self.client_cert_pem, &self.client_key_pem) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return bad("client_cert_pem and client_key_pem must be set together")
            }
            (Some(cert), Some(key)) => {
                let n = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::InvalidConfig(format!("redis tls: client_cert_pem is not PEM: {e}")))?
                    .len();
                if n == 0 {
                    return bad("client_cert_pem holds no PEM certificate");
                }
                // The parser's error names the problem, never the key bytes.
                if PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).is_err() {
                    return bad("client_key_pem holds no PEM private key");
                }
            }
        }
        Ok(())
    }

    /// The certificates in the form redis-rs takes.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        let client_tls = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.as_bytes().to_vec(),
                client_key: key.expose().as_bytes().to_vec(),
            }),
            _ => None,
        };
        redis::TlsCertificates {
            client_tls,
            root_cert: self.ca_pem.as_ref().map(|c| c.as_bytes().to_vec()),
        }
    }
}

/// redis-rs builds its rustls config with the process-wide default crypto
/// provider. When the application installed none, install ring (the one
/// agentscale builds with) so the handshake cannot panic on an ambiguous or
/// missing provider. An application that installs its own first keeps it.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// What went wrong in a TLS handshake, if `e` is a TLS failure: these are
/// configuration problems (wrong CA, wrong host name, client certificate
/// missing or refused, plaintext port), not outages, so they are not retried.
pub(crate) fn tls_failure(e: &redis::RedisError) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return Some(explain(t));
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(explain(t));
            }
        }
        source = s.source();
    }
    None
}

fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    let hint = match e {
        E::InvalidCertificate(_) => {
            "the server's certificate is not trusted for this host (check tls.ca_pem and the URL's host name)"
        }
        E::AlertReceived(A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure)
        | E::AlertReceived(A::AccessDenied | A::CertificateUnknown) => {
            "the server refused the client certificate (check tls.client_cert_pem / client_key_pem)"
        }
        E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. } | E::InappropriateMessage { .. } => {
            "the server did not answer TLS (is this a plaintext port? use redis://)"
        }
        _ => "TLS handshake failed",
    };
    format!("{hint}: {e}")
}
