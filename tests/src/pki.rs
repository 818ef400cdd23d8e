//! A throw-away PKI made in the test (rcgen): a CA, a server certificate for
//! `localhost` and `127.0.0.1`, and a client certificate, all signed by that
//! CA, plus files for servers that want paths. No key material is committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// One certificate and its private key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A CA with one server and one client certificate.
pub struct TestPki {
    /// The CA certificate (what clients and servers trust).
    pub ca_pem: String,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server: Identity,
    /// Client certificate (CN `agentscale-test-client`).
    pub client: Identity,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    /// A fresh CA named `name` with its server and client certificates.
    pub fn new(name: &str) -> TestPki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key")).expect("ca");
        let server = Self::leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = Self::leaf(
            &issuer,
            &[],
            "agentscale-test-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            ca_pem: issuer.pem(),
            server,
            client,
            issuer,
        }
    }

    /// Another server certificate from this CA, valid only for `names`.
    pub fn server_for(&self, names: &[&str]) -> Identity {
        Self::leaf(
            &self.issuer,
            names,
            names.first().copied().unwrap_or("server"),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn leaf(
        issuer: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Identity {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, issuer).expect("sign leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `server.pem`, `server.key` (mode 0600) into `dir`.
    pub fn write_server_files(&self, dir: &Path) -> ServerFiles {
        write_files(dir, &self.ca_pem, &self.server)
    }
}

/// Paths of a server's TLS files.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// CA certificate (for verifying clients).
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key (mode 0600).
    pub key: PathBuf,
}

/// Writes a CA and a server identity into `dir` (key mode 0600, as
/// PostgreSQL demands).
pub fn write_files(dir: &Path, ca_pem: &str, server: &Identity) -> ServerFiles {
    use std::os::unix::fs::PermissionsExt;
    let f = ServerFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&f.ca, ca_pem).expect("write ca");
    std::fs::write(&f.cert, &server.cert_pem).expect("write cert");
    std::fs::write(&f.key, &server.key_pem).expect("write key");
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    f
}
