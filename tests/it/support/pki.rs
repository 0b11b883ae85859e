//! A private CA for the TLS tests of this process, trusted by the in-process client, and the
//! leaf certificates it signs.

use std::path::PathBuf;
use std::sync::OnceLock;

use ringside::tls::TlsFiles;

/// A private CA for this test process, trusted by the client, and the leaves it signs.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate (PEM), for clients to trust.
    pub ca_file: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ringside-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        ringside_client::tls::trust_ca_file(&ca_file).unwrap();
        Pki {
            dir,
            ca_file,
            issuer: rcgen::Issuer::new(params, key),
        }
    })
}

/// A new leaf for 127.0.0.1 and localhost, written to `<name>.crt` and `<name>.key`; returns
/// the files and the leaf's DER.
pub fn leaf(name: &str) -> (TlsFiles, Vec<u8>) {
    let pki = pki();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    let files = TlsFiles {
        cert: pki.dir.join(format!("{name}.crt")),
        key: pki.dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (files, cert.der().to_vec())
}
