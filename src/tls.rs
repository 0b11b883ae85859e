//! TLS in process: given a certificate chain and its private key (PEM files, `--tls-cert` and
//! `--tls-key`), a listener serves `https://` and `wss://` on the same port, with rustls.
//! Both files are read again on `SIGHUP` (or [`ServerTls::reload`]): connections that are open
//! keep their session, new handshakes get the new certificate, and files that do not load leave
//! the old one in place (logged). docs/OPERATIONS.md, "TLS".

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use ringside_sync_util::RwLockExt as _;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Where a listener's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files: the chain is not empty and the key is the leaf's.
    pub fn load(&self) -> anyhow::Result<CertifiedKey> {
        let cert = self.cert.display();
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("--tls-cert {cert}: cannot read it"))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--tls-cert {cert}: not a PEM certificate chain"))?;
        if chain.is_empty() {
            anyhow::bail!("--tls-cert {cert}: holds no certificate");
        }
        let key = self.key.display();
        let private = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("--tls-key {key}: cannot read a PEM private key in it"))?;
        CertifiedKey::from_der(chain, private, &ringside_client::tls::crypto_provider())
            .with_context(|| format!("--tls-key {key}: not the key of the certificate in {cert}"))
    }
}

/// The certificate handshakes get: swapped whole on a reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read_locked().clone())
    }
}

/// A listener's TLS: its acceptor and the files it reloads.
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS 1.3 and 1.2 (older TV stacks), HTTP/1.1 by ALPN.
    pub fn new(files: &TlsFiles) -> anyhow::Result<Arc<Self>> {
        let current = Arc::new(Current(RwLock::new(Arc::new(files.load()?))));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(ringside_client::tls::crypto_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            files: files.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads both files again; on success new handshakes get them, else nothing changes.
    pub fn reload(&self) -> anyhow::Result<()> {
        let loaded = self.files.load()?;
        *self.current.0.write_locked() = Arc::new(loaded);
        Ok(())
    }

    /// Reloads on every signal `hangups` receives (`SIGHUP`) until `stop`.
    pub async fn reload_on(
        self: Arc<Self>,
        mut hangups: tokio::signal::unix::Signal,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded")
                }
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "TLS files not reloaded; the previous certificate stays"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_leaf(dir: &std::path::Path, name: &str) -> (TlsFiles, Vec<u8>) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, generated.cert.pem()).expect("write");
        std::fs::write(&files.key, generated.signing_key.serialize_pem()).expect("write");
        (files, generated.cert.der().to_vec())
    }

    fn presented(tls: &ServerTls) -> Vec<u8> {
        tls.current.0.read_locked().cert[0].to_vec()
    }

    #[test]
    fn files_that_do_not_load_are_refused_naming_the_flag_and_a_failed_reload_keeps_the_old() {
        let dir = std::env::temp_dir().join(format!("ringside-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (files, first) = write_leaf(&dir, "a");
        let (other, _) = write_leaf(&dir, "b");
        let tls = ServerTls::new(&files).expect("loads");
        assert_eq!(presented(&tls), first);

        let mismatched = TlsFiles {
            cert: files.cert.clone(),
            key: other.key.clone(),
        };
        let error = format!("{:#}", mismatched.load().unwrap_err());
        assert!(error.starts_with("--tls-key"), "{error}");
        let missing = TlsFiles {
            cert: dir.join("missing.crt"),
            key: files.key.clone(),
        };
        let error = format!("{:#}", missing.load().unwrap_err());
        assert!(error.starts_with("--tls-cert"), "{error}");

        // A reload of broken files fails and the old certificate stays; good ones replace it.
        std::fs::write(&files.cert, "garbage").expect("write");
        assert!(tls.reload().is_err());
        assert_eq!(presented(&tls), first);
        std::fs::copy(&other.cert, &files.cert).expect("copy");
        std::fs::copy(&other.key, &files.key).expect("copy");
        tls.reload().expect("reloads");
        assert_ne!(presented(&tls), first);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
