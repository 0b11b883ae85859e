//! TLS for the client: `https://` and `wss://` addresses, trusting the platform's roots plus
//! the certificates of the PEM file `RINGSIDE_CA_FILE` names (a private or self-signed
//! deployment).

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::ClientError;

/// The variable naming a PEM file of extra trusted certificates.
pub const CA_FILE_VARIABLE: &str = "RINGSIDE_CA_FILE";

/// A connection to a server: plain TCP, or TLS over it (boxed: a TLS session is large).
pub type ClientStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// `stream` as is, or (`tls`) after a TLS handshake with `host`, whose certificate must chain
/// to a trusted root and name `host`.
pub async fn open(stream: TcpStream, tls: bool, host: &str) -> Result<ClientStream, ClientError> {
    if !tls {
        return Ok(Either::Left(stream));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| ClientError::InvalidAddress(host.to_owned()))?;
    let connector = TlsConnector::from(client_config()?);
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|error| ClientError::Tls(error.to_string()))?;
    Ok(Either::Right(Box::new(stream)))
}

/// The TLS provider of every Ringside process, client and server: rustls on ring. aws-lc-rs,
/// the provider with post-quantum key exchange, builds a C library with cmake, minutes on two
/// cores; ring's X25519 and P-256 are what device stacks offer today.
#[allow(deprecated)]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// An extra CA file set by the program instead of `RINGSIDE_CA_FILE`.
static EXTRA_CA_FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
/// Built on the first TLS connection.
static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();

/// Trusts the certificates of the PEM file `path` too, instead of `RINGSIDE_CA_FILE`'s: for a
/// program that takes the file as an option. Only before the process's first TLS connection,
/// and once.
pub fn trust_ca_file(path: impl Into<std::path::PathBuf>) -> Result<(), ClientError> {
    let path = path.into();
    if CONFIG.get().is_none() {
        let _first_wins = EXTRA_CA_FILE.set(path.clone());
    }
    if EXTRA_CA_FILE.get() == Some(&path) {
        return Ok(());
    }
    Err(ClientError::Tls(
        "the trusted CA file is set once, before the first TLS connection".into(),
    ))
}

/// The extra CA file the process trusts: [`trust_ca_file`]'s, else `RINGSIDE_CA_FILE`'s.
pub fn ca_file() -> Option<std::path::PathBuf> {
    EXTRA_CA_FILE
        .get()
        .cloned()
        .or_else(|| std::env::var_os(CA_FILE_VARIABLE).map(Into::into))
}

/// The client's TLS configuration, built once per process: TLS 1.3 and 1.2, the platform's
/// roots and those of `RINGSIDE_CA_FILE` (or [`trust_ca_file`]).
pub fn client_config() -> Result<Arc<ClientConfig>, ClientError> {
    CONFIG
        .get_or_init(|| build_config(ca_file().map(Into::into)).map(Arc::new))
        .clone()
        .map_err(ClientError::Tls)
}

fn build_config(ca_file: Option<std::ffi::OsString>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    // The platform's store; certificates it holds that do not parse are skipped.
    let native = rustls_native_certs::load_native_certs();
    let _unparsed = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = std::path::Path::new(&path).display().to_string();
        let extra = CertificateDer::pem_file_iter(&path)
            .map_err(|error| format!("{CA_FILE_VARIABLE} {shown}: {error}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("{CA_FILE_VARIABLE} {shown}: {error}"))?;
        if extra.is_empty() {
            return Err(format!("{CA_FILE_VARIABLE} {shown}: holds no certificate"));
        }
        for certificate in extra {
            roots
                .add(certificate)
                .map_err(|error| format!("{CA_FILE_VARIABLE} {shown}: {error}"))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_does_not_load_is_a_clear_error() {
        let missing = build_config(Some("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(
            missing.starts_with("RINGSIDE_CA_FILE /nonexistent/ca.pem"),
            "{missing}"
        );
        let empty = std::env::temp_dir().join(format!("ringside-empty-ca-{}", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error = build_config(Some(empty.clone().into())).unwrap_err();
        std::fs::remove_file(&empty).expect("remove");
        assert!(error.contains("holds no certificate"), "{error}");
        assert!(build_config(None).is_ok());
    }
}
