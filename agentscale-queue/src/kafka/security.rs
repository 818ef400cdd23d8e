//! Typed TLS and SASL settings of the Kafka clients (no raw librdkafka keys).

use std::fmt;

use agentscale_core::config::Secret;
use agentscale_core::{Error, Result};
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

/// How the clients talk to the brokers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KafkaProtocol {
    /// No TLS, no authentication (default).
    #[default]
    Plaintext,
    /// TLS; the broker's certificate and host name are verified (needs the
    /// `kafka-tls` feature).
    Ssl,
    /// SASL authentication without TLS: the credentials cross the network
    /// in the clear with PLAIN. Only for a network you trust.
    SaslPlaintext,
    /// SASL authentication inside TLS (needs the `kafka-tls` feature).
    SaslSsl,
}

impl KafkaProtocol {
    fn as_str(self) -> &'static str {
        match self {
            KafkaProtocol::Plaintext => "plaintext",
            KafkaProtocol::Ssl => "ssl",
            KafkaProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaProtocol::SaslSsl => "sasl_ssl",
        }
    }
    fn tls(self) -> bool {
        matches!(self, KafkaProtocol::Ssl | KafkaProtocol::SaslSsl)
    }
    fn sasl(self) -> bool {
        matches!(self, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl)
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KafkaSaslMechanism {
    /// `PLAIN`: user and password sent as they are (use with `sasl_ssl`).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256` (needs the `kafka-tls` feature: librdkafka's SCRAM uses OpenSSL).
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512` (needs the `kafka-tls` feature).
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl KafkaSaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            KafkaSaslMechanism::Plain => "PLAIN",
            KafkaSaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            KafkaSaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS and SASL settings shared by every client of a queue (producer,
/// consumers, admin). PEM values are file contents; through the config
/// loader set them from mounted files with the `_FILE` convention
/// (`AGENTSCALE_KAFKA__SECURITY__SASL_PASSWORD_FILE=/var/run/secrets/kafka/password`).
/// `Debug` never prints the password or the key.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaSecurityConfig {
    /// Transport and authentication (default `plaintext`).
    pub protocol: KafkaProtocol,
    /// CA certificate(s), PEM, that sign the brokers' certificates (default:
    /// the system trust store).
    pub ca_pem: Option<String>,
    /// Client certificate, PEM, for mutual TLS.
    pub client_cert_pem: Option<String>,
    /// Private key of the client certificate, PEM.
    pub client_key_pem: Option<Secret>,
    /// SASL mechanism (default `PLAIN`).
    pub sasl_mechanism: KafkaSaslMechanism,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Option<Secret>,
}

impl fmt::Debug for KafkaSecurityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSecurityConfig")
            .field("protocol", &self.protocol)
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(String::len))
            .field(
                "client_cert_pem_bytes",
                &self.client_cert_pem.as_ref().map(String::len),
            )
            .field("client_key_pem", &self.client_key_pem)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .finish()
    }
}

/// Whether this build's librdkafka has OpenSSL (the `kafka-tls` feature).
pub const KAFKA_TLS_BUILT: bool = cfg!(feature = "kafka-tls");

impl KafkaSecurityConfig {
    /// Checks that the settings fit the protocol and this build.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("kafka security: {m}")));
        let p = self.protocol;
        let needs_openssl = p.tls()
            || matches!(
                self.sasl_mechanism,
                KafkaSaslMechanism::ScramSha256 | KafkaSaslMechanism::ScramSha512
            ) && p.sasl();
        if needs_openssl && !KAFKA_TLS_BUILT {
            return bad(format!(
                "protocol {} with mechanism {} needs the `kafka-tls` feature (librdkafka with OpenSSL)",
                p.as_str(),
                self.sasl_mechanism.as_str()
            ));
        }
        let tls_set =
            self.ca_pem.is_some() || self.client_cert_pem.is_some() || self.client_key_pem.is_some();
        if tls_set && !p.tls() {
            return bad(format!(
                "ca_pem / client certificate need protocol ssl or sasl_ssl, not {}",
                p.as_str()
            ));
        }
        if self.client_cert_pem.is_some() != self.client_key_pem.is_some() {
            return bad("client_cert_pem and client_key_pem must be set together".into());
        }
        let sasl_set = self.sasl_username.is_some() || self.sasl_password.is_some();
        if p.sasl() && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
            return bad(format!(
                "protocol {} needs sasl_username and sasl_password",
                p.as_str()
            ));
        }
        if sasl_set && !p.sasl() {
            return bad(format!(
                "sasl_username / sasl_password need protocol sasl_plaintext or sasl_ssl, not {}",
                p.as_str()
            ));
        }
        for (name, pem) in [
            ("ca_pem", &self.ca_pem),
            ("client_cert_pem", &self.client_cert_pem),
        ] {
            if let Some(pem) = pem {
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return bad(format!("{name} holds no PEM certificate"));
                }
            }
        }
        if let Some(key) = &self.client_key_pem {
            if !key.expose().contains("PRIVATE KEY-----") {
                return bad("client_key_pem holds no PEM private key".into());
            }
        }
        Ok(())
    }

    /// Writes the librdkafka properties. Host names are always verified
    /// (`ssl.endpoint.identification.algorithm=https`).
    pub(crate) fn apply(&self, c: &mut ClientConfig) {
        if self.protocol == KafkaProtocol::Plaintext {
            return;
        }
        c.set("security.protocol", self.protocol.as_str());
        if self.protocol.tls() {
            c.set("ssl.endpoint.identification.algorithm", "https");
            if let Some(ca) = &self.ca_pem {
                c.set("ssl.ca.pem", ca);
            }
            if let (Some(cert), Some(key)) = (&self.client_cert_pem, &self.client_key_pem) {
                c.set("ssl.certificate.pem", cert);
                c.set("ssl.key.pem", key.expose());
            }
        }
        if self.protocol.sasl() {
            c.set("sasl.mechanism", self.sasl_mechanism.as_str());
            if let Some(u) = &self.sasl_username {
                c.set("sasl.username", u);
            }
            if let Some(p) = &self.sasl_password {
                c.set("sasl.password", p.expose());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain_maps_to_librdkafka_keys_and_debug_hides_the_password() {
        let s = KafkaSecurityConfig {
            protocol: KafkaProtocol::SaslPlaintext,
            sasl_username: Some("u".into()),
            sasl_password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        s.validate().expect("valid");
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn mismatched_settings_are_refused() {
        let half = KafkaSecurityConfig {
            protocol: KafkaProtocol::SaslPlaintext,
            sasl_username: Some("u".into()),
            ..Default::default()
        };
        assert!(half.validate().is_err());
        let tls_on_plain = KafkaSecurityConfig {
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            ..Default::default()
        };
        assert!(tls_on_plain.validate().is_err());
        let ssl = KafkaSecurityConfig {
            protocol: KafkaProtocol::Ssl,
            ..Default::default()
        };
        assert_eq!(ssl.validate().is_ok(), KAFKA_TLS_BUILT);
    }
}
