//! The two secrets of a deployment: the device-token secret (signs device JWTs) and the admin
//! token (operators' bearer token).
//!
//! Production sets both (`RINGSIDE_DEVICE_TOKEN_SECRET`, `RINGSIDE_ADMIN_TOKEN`) and passes
//! `--production`, which makes a missing secret a startup error. Without them, development mode
//! generates a random pair once, stores it in `<state dir>/dev-secrets.json` (mode 0600) and
//! says so on startup; the CLI's token, event and watch commands read the same file. There is
//! no built-in default secret.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The secrets a process runs with.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Secrets {
    pub device_token_secret: String,
    pub admin_token: String,
    /// A rotation of the device-token secret under way, from the environment only (never in
    /// the development file).
    #[serde(skip)]
    pub rotation: KeyRotation,
}

/// Key ids and the secret being rotated out, for a rotation of the device-token secret
/// (docs/OPERATIONS.md, "Rotating the device-token secret").
#[derive(Clone, Default)]
pub struct KeyRotation {
    /// `RINGSIDE_DEVICE_TOKEN_KID`: the key id tokens are signed under.
    pub kid: Option<String>,
    /// `RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET` (or `…_FILE`): still accepted, never signs.
    pub previous_secret: Option<String>,
    /// `RINGSIDE_DEVICE_TOKEN_PREVIOUS_KID`: the previous secret's key id, if it had one.
    pub previous_kid: Option<String>,
}

impl std::fmt::Debug for KeyRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids are not secret; the previous secret is.
        f.debug_struct("KeyRotation")
            .field("kid", &self.kid)
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<secret>"),
            )
            .field("previous_kid", &self.previous_kid)
            .finish()
    }
}

impl KeyRotation {
    pub fn from_env() -> anyhow::Result<Self> {
        let plain = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let rotation = Self {
            kid: plain("RINGSIDE_DEVICE_TOKEN_KID"),
            previous_secret: from_env("RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET")?,
            previous_kid: plain("RINGSIDE_DEVICE_TOKEN_PREVIOUS_KID"),
        };
        if rotation.previous_kid.is_some() && rotation.previous_secret.is_none() {
            bail!(
                "RINGSIDE_DEVICE_TOKEN_PREVIOUS_KID is set without \
                 RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET"
            );
        }
        Ok(rotation)
    }
}

impl Secrets {
    /// The device-token key: the current secret (under its kid) and, during a rotation, the
    /// previous one.
    pub fn device_token_key(&self) -> anyhow::Result<ringside_auth::DeviceTokenKey> {
        let mut key = ringside_auth::DeviceTokenKey::new(self.device_token_secret.as_bytes())
            .context("RINGSIDE_DEVICE_TOKEN_SECRET")?;
        if let Some(kid) = &self.rotation.kid {
            key = key.with_kid(kid).context("RINGSIDE_DEVICE_TOKEN_KID")?;
        }
        if let Some(previous) = &self.rotation.previous_secret {
            key = key
                .with_previous(previous.as_bytes(), self.rotation.previous_kid.as_deref())
                .context(
                    "RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET and RINGSIDE_DEVICE_TOKEN_PREVIOUS_KID",
                )?;
        }
        Ok(key)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

/// Where the secrets came from, for the startup banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    /// Generated for development and stored in this file.
    DevelopmentFile(PathBuf),
}

const DEV_SECRETS_FILE: &str = "dev-secrets.json";

/// The state directory: `RINGSIDE_STATE_DIR`, else `~/.ringside`, else `./.ringside`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".ringside"))
        .unwrap_or_else(|| PathBuf::from(".ringside"))
}

fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Resolves the secrets for `serve`: both configured, or (unless `production`) the development
/// pair, created if needed. A half-configured pair is an error rather than a silent mix.
pub fn for_server(
    device_token_secret: Option<String>,
    admin_token: Option<String>,
    production: bool,
    state_dir: &Path,
) -> anyhow::Result<(Secrets, SecretSource)> {
    let (mut secrets, source) = match (device_token_secret, admin_token) {
        (Some(device_token_secret), Some(admin_token)) => (
            Secrets {
                device_token_secret,
                admin_token,
                rotation: KeyRotation::default(),
            },
            SecretSource::Configured,
        ),
        (None, None) if !production => {
            let path = state_dir.join(DEV_SECRETS_FILE);
            let secrets = match read_file(&path)? {
                Some(secrets) => secrets,
                None => create_file(&path)?,
            };
            (secrets, SecretSource::DevelopmentFile(path))
        }
        (None, None) => bail!(
            "--production needs RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN; \
             Ringside has no default secrets"
        ),
        _ => bail!(
            "set both RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN, or neither \
             (development mode generates both)"
        ),
    };
    // From the environment whatever the secrets' source, as the CLI reads it: a kid set in a
    // development shell applies to the server and to `ringside token` alike.
    secrets.rotation = KeyRotation::from_env()?;
    Ok((secrets, source))
}

/// A secret from the environment: `NAME`, or the trimmed contents of the file `NAME_FILE` names
/// (as secret stores mount them). Empty values count as unset.
pub fn from_env(name: &str) -> anyhow::Result<Option<String>> {
    if let Some(value) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
        return Ok(Some(value));
    }
    let file_variable = format!("{name}_FILE");
    let Some(path) = std::env::var_os(&file_variable) else {
        return Ok(None);
    };
    let value = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{file_variable}: cannot read {}",
            PathBuf::from(&path).display()
        )
    })?;
    Ok(Some(value.trim().to_owned()).filter(|v| !v.is_empty()))
}

/// The development secrets, for CLI commands run beside a development server.
pub fn development(state_dir: &Path) -> anyhow::Result<Option<Secrets>> {
    read_file(&state_dir.join(DEV_SECRETS_FILE))
}

fn read_file(path: &Path) -> anyhow::Result<Option<Secrets>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a valid secrets file", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn create_file(path: &Path) -> anyhow::Result<Secrets> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let secrets = Secrets {
        device_token_secret: random_secret()?,
        admin_token: random_secret()?,
        rotation: KeyRotation::default(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(&serde_json::to_vec_pretty(&secrets)?));
    match written {
        Ok(()) => Ok(secrets),
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_file(path)?.context("secrets file vanished while being created")
        }
        Err(error) => Err(error).with_context(|| format!("cannot write {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_secrets_are_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("ringside-secrets-{}", std::process::id()));
        let (first, source) = for_server(None, None, false, &dir).expect("created");
        assert!(matches!(source, SecretSource::DevelopmentFile(_)));
        assert_eq!(first.admin_token.len(), 64);
        let (second, _) = for_server(None, None, false, &dir).expect("reused");
        assert_eq!(first.admin_token, second.admin_token);
        assert_ne!(first.admin_token, first.device_token_secret);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn production_never_falls_back() {
        let dir = std::env::temp_dir().join("ringside-never-created");
        assert!(for_server(None, None, true, &dir).is_err());
        assert!(for_server(Some("x".repeat(40)), None, false, &dir).is_err());
        assert!(!dir.exists());
    }
}
