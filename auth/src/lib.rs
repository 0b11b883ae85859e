//! Who may connect and who may operate.
//!
//! - Devices present a JWT signed HS256 with the device-token secret; its claims say which
//!   device, profile and device class the connection belongs to ([`DeviceTokenKey`]). A key
//!   can rotate: a node accepts a current and a previous secret, told apart by the token
//!   header's `kid`.
//! - Operators present the admin token as a bearer token ([`AdminToken`]).
//!
//! Both secrets must be long enough to resist guessing; comparisons are constant-time. The
//! messages of [`TokenError`] are safe to return to clients: they say what is wrong with the
//! token, never anything about the secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ringside_protocol::Priority;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Shortest accepted secret, in bytes, for both device-token and admin secrets.
pub const SECRET_MIN_BYTES: usize = 32;
/// Longest accepted device or profile id, in bytes.
pub const ID_MAX_BYTES: usize = 128;
/// Longest token we even try to parse; anything longer is malformed.
const TOKEN_MAX_BYTES: usize = 4096;

/// The kind of device behind a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Tv,
    Mobile,
    Web,
}

impl std::str::FromStr for DeviceClass {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "tv" => Ok(Self::Tv),
            "mobile" => Ok(Self::Mobile),
            "web" => Ok(Self::Web),
            other => Err(format!(
                "unknown device class {other:?}: expected tv, mobile or web"
            )),
        }
    }
}

/// The claims of a device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// Device id.
    pub sub: String,
    /// Profile id: whose data this device may read.
    pub profile: String,
    pub class: DeviceClass,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, in seconds since the Unix epoch (absent: valid from its signing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The highest priority class this device's requests get (absent: the route's class). It
    /// can only lower a request's class, never raise it; a fleet of analytics boxes is minted
    /// with `bulk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing device token: pass it as ?token=… or Authorization: Bearer …")]
    Missing,
    #[error("malformed device token")]
    Malformed,
    #[error("device token uses an unsupported algorithm; expected HS256")]
    UnsupportedAlgorithm,
    #[error("device token signature does not verify")]
    BadSignature,
    #[error("device token has expired")]
    Expired,
    #[error("device token is not valid yet (nbf)")]
    NotYetValid,
    #[error("device token lives longer than this node accepts (exp too far ahead)")]
    TooLong,
    #[error("device token claims are invalid: sub and profile must be 1 to 128 bytes")]
    InvalidClaims,
    #[error("device token names a key (kid) this node does not accept")]
    UnknownKey,
}

/// Why a secret was refused at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{name} must be at least {SECRET_MIN_BYTES} bytes long (it is {len})")]
    TooShort { name: &'static str, len: usize },
    #[error(
        "a device-token key id (kid) must be 1 to {KID_MAX_BYTES} of A-Z a-z 0-9 . _ - (got {0:?})"
    )]
    BadKid(String),
    #[error(
        "the current and the previous device-token keys must differ in kid (set RINGSIDE_DEVICE_TOKEN_KID or RINGSIDE_DEVICE_TOKEN_PREVIOUS_KID)"
    )]
    SameKid,
}

/// Longest key id, in bytes.
pub const KID_MAX_BYTES: usize = 64;

fn check_kid(kid: &str) -> Result<(), SecretError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if kid.is_empty() || kid.len() > KID_MAX_BYTES || !kid.bytes().all(allowed) {
        return Err(SecretError::BadKid(
            kid.chars().take(KID_MAX_BYTES).collect(),
        ));
    }
    Ok(())
}

fn check_secret(name: &'static str, secret: &[u8]) -> Result<(), SecretError> {
    if secret.len() < SECRET_MIN_BYTES {
        return Err(SecretError::TooShort {
            name,
            len: secret.len(),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
struct Header<'a> {
    alg: &'a str,
    #[serde(default, borrow)]
    kid: Option<&'a str>,
}

/// How a node reads a device token's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRules {
    /// How far the issuer's clock may be from this node's: a token is still accepted this long
    /// after its `exp`, and this long before its `nbf` (default 60 s, at most 10 minutes).
    pub clock_skew: std::time::Duration,
    /// The longest a token may still be valid for: one whose `exp` lies further ahead (plus
    /// the skew) is refused, so that a leaked long-lived token cannot be minted by mistake and
    /// used for years (default 30 days; 1 minute to 1 year).
    pub max_lifetime: std::time::Duration,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            clock_skew: std::time::Duration::from_secs(60),
            max_lifetime: std::time::Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl TokenRules {
    /// Checks both bounds; the message names the flag that sets each.
    pub fn validate(&self) -> Result<(), String> {
        if self.clock_skew > std::time::Duration::from_secs(600) {
            return Err("--token-clock-skew-s must be at most 600".into());
        }
        let lifetime = self.max_lifetime.as_secs();
        if !(60..=366 * 24 * 3600).contains(&lifetime) {
            return Err("--token-max-lifetime-s must be between 60 and 31622400".into());
        }
        Ok(())
    }
}

/// One secret: its optional key id and its HMAC state, with the encoded header tokens signed
/// by it carry.
#[derive(Clone)]
struct SigningKey {
    kid: Option<String>,
    mac: Hmac<Sha256>,
    /// `base64url({"alg":"HS256","typ":"JWT"[,"kid":…]})`.
    header: String,
}

impl SigningKey {
    fn new(name: &'static str, secret: &[u8], kid: Option<&str>) -> Result<Self, SecretError> {
        check_secret(name, secret)?;
        if let Some(kid) = kid {
            check_kid(kid)?;
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Ok(Self {
            kid: kid.map(str::to_owned),
            mac,
            header: encoded_header(kid),
        })
    }
}

/// The encoded JOSE header of a token signed under `kid` (checked: its characters need no
/// JSON escaping).
fn encoded_header(kid: Option<&str>) -> String {
    let header = match kid {
        Some(kid) => format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#),
        None => r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(header)
}

/// Signs and verifies device tokens.
///
/// It holds the current secret, which signs, and optionally the previous one, which still
/// verifies while a rotation is under way. A token's header `kid` selects the secret; a token
/// without one is checked against the secret without a kid, or, when both have one, the
/// current secret (so tools that sign without a kid keep working against the current key).
#[derive(Clone)]
pub struct DeviceTokenKey {
    current: SigningKey,
    previous: Option<SigningKey>,
    rules: TokenRules,
}

impl fmt::Debug for DeviceTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids are not secret; they say which rotation a node is at.
        f.debug_struct("DeviceTokenKey")
            .field("kid", &self.current.kid)
            .field("previous_kid", &self.previous.as_ref().map(|key| &key.kid))
            .finish_non_exhaustive()
    }
}

impl DeviceTokenKey {
    /// A key of one secret, without a key id.
    pub fn new(secret: &[u8]) -> Result<Self, SecretError> {
        Ok(Self {
            current: SigningKey::new("the device-token secret", secret, None)?,
            previous: None,
            rules: TokenRules::default(),
        })
    }

    /// The same secret under key id `kid` (1 to 64 of `A-Z a-z 0-9 . _ -`): tokens it signs
    /// carry it in their header.
    pub fn with_kid(mut self, kid: &str) -> Result<Self, SecretError> {
        check_kid(kid)?;
        self.current.kid = Some(kid.to_owned());
        self.current.header = encoded_header(Some(kid));
        self.check_kids_differ()?;
        Ok(self)
    }

    /// Also accepts tokens signed with `secret` (the key being rotated out), under `kid`.
    /// Tokens are still signed with the current secret only.
    pub fn with_previous(mut self, secret: &[u8], kid: Option<&str>) -> Result<Self, SecretError> {
        self.previous = Some(SigningKey::new(
            "the previous device-token secret",
            secret,
            kid,
        )?);
        self.check_kids_differ()?;
        Ok(self)
    }

    fn check_kids_differ(&self) -> Result<(), SecretError> {
        match &self.previous {
            Some(previous) if previous.kid == self.current.kid => Err(SecretError::SameKid),
            _ => Ok(()),
        }
    }

    /// The key id tokens are signed under, if any.
    pub fn kid(&self) -> Option<&str> {
        self.current.kid.as_deref()
    }

    /// How this key reads a token's times.
    pub fn rules(&self) -> TokenRules {
        self.rules
    }

    /// The same key, reading times by `rules` (validated: see [`TokenRules::validate`]).
    #[must_use]
    pub fn with_rules(mut self, rules: TokenRules) -> Self {
        self.rules = rules;
        self
    }

    /// Issues a token for `claims`, with the current secret.
    pub fn sign(&self, claims: &DeviceClaims) -> String {
        let claims_json =
            serde_json::to_vec(claims).unwrap_or_else(|_| unreachable!("claims always encode"));
        let signing_input = format!(
            "{}.{}",
            self.current.header,
            URL_SAFE_NO_PAD.encode(claims_json)
        );
        let mut mac = self.current.mac.clone();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// The secret a token's header `kid` selects.
    fn key_for(&self, kid: Option<&str>) -> Option<&SigningKey> {
        let mut keys = std::iter::once(&self.current).chain(&self.previous);
        match kid {
            Some(kid) => keys.find(|key| key.kid.as_deref() == Some(kid)),
            None => keys.find(|key| key.kid.is_none()).or(Some(&self.current)),
        }
    }

    /// Checks the signature and expiry of `token` at `now_s` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now_s: u64) -> Result<DeviceClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > TOKEN_MAX_BYTES {
            return Err(TokenError::Malformed);
        }
        let Some((signing_input, signature)) = token.rsplit_once('.') else {
            return Err(TokenError::Malformed);
        };
        let Some((header, claims)) = signing_input.split_once('.') else {
            return Err(TokenError::Malformed);
        };
        if claims.contains('.') {
            return Err(TokenError::Malformed);
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header: Header<'_> =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let key = self.key_for(header.kid).ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = key.mac.clone();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims_json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed)?;
        let claims: DeviceClaims =
            serde_json::from_slice(&claims_json).map_err(|_| TokenError::Malformed)?;
        let skew = self.rules.clock_skew.as_secs();
        if claims.exp.saturating_add(skew) <= now_s {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_s.saturating_add(skew))
        {
            return Err(TokenError::NotYetValid);
        }
        let longest = self.rules.max_lifetime.as_secs().saturating_add(skew);
        if claims.exp > now_s.saturating_add(longest) {
            return Err(TokenError::TooLong);
        }
        let id_ok = |id: &str| !id.is_empty() && id.len() <= ID_MAX_BYTES;
        if !id_ok(&claims.sub) || !id_ok(&claims.profile) {
            return Err(TokenError::InvalidClaims);
        }
        Ok(claims)
    }
}

/// Largest claims part of a token [`priority_ceiling`] decodes, in bytes once decoded.
const CEILING_CLAIMS_MAX_BYTES: usize = 1024;

/// The `priority` claim of a device token, read **without** verifying the token: for the
/// request classifier, which runs before any handler and must stay cheap (no allocation, no
/// HMAC). A forged claim can only lower the class of its own request, which the handler then
/// refuses anyway; every other use of the claims goes through [`DeviceTokenKey::verify`].
/// `None` for a token without the claim, or one that does not decode.
pub fn priority_ceiling(token: &str) -> Option<Priority> {
    #[derive(Deserialize)]
    struct Ceiling {
        priority: Option<Priority>,
    }
    let claims = token.split('.').nth(1)?;
    let mut decoded = [0u8; CEILING_CLAIMS_MAX_BYTES];
    let length = URL_SAFE_NO_PAD
        .decode_slice(claims.as_bytes(), &mut decoded)
        .ok()?;
    serde_json::from_slice::<Ceiling>(&decoded[..length])
        .ok()?
        .priority
}

/// The operators' bearer token.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<secret>)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Result<Self, SecretError> {
        check_secret("the admin token", token.as_bytes())?;
        Ok(Self {
            digest: sha256(token.as_bytes()),
        })
    }

    /// Constant-time check of a presented token: both sides are hashed to fixed-length
    /// digests first, so neither content nor length leaks through timing.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = sha256(presented.as_bytes());
        presented
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(bytes).into()
}

/// What is wrong with a configured web origin (CORS, or an `Origin` allow-list), if anything.
/// Browsers send `Origin` as `scheme://host[:port]`, lowercase, without a path or the scheme's
/// default port; an entry of another shape would never match, so it is refused at startup
/// instead of silently allowing nothing.
pub fn origin_problem(origin: &str) -> Option<&'static str> {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return Some("each origin must start with https:// or http://");
    };
    // Browsers leave the scheme's default port out of `Origin`.
    let default_port = if origin.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    if rest.ends_with(default_port) {
        return Some("leave the scheme's default port out: browsers never send it in Origin");
    }
    let host_allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:[]".contains(c);
    if rest.is_empty() || !rest.chars().all(host_allowed) {
        return Some(
            "each origin is scheme://host[:port] in lowercase, without a path or a trailing slash",
        );
    }
    None
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp: u64) -> DeviceClaims {
        DeviceClaims {
            sub: "tv-1".into(),
            profile: "p-1".into(),
            class: DeviceClass::Tv,
            exp,
            nbf: None,
            priority: None,
        }
    }

    #[test]
    fn the_priority_ceiling_is_read_from_the_claims_and_round_trips() {
        let key = DeviceTokenKey::new(SECRET).expect("key");
        let plain = key.sign(&claims(2_000));
        assert_eq!(priority_ceiling(&plain), None);
        assert!(!plain.contains("priority") && key.verify(&plain, 1_000).is_ok());
        let bulk = DeviceClaims {
            priority: Some(Priority::Bulk),
            ..claims(2_000)
        };
        let token = key.sign(&bulk);
        assert_eq!(priority_ceiling(&token), Some(Priority::Bulk));
        assert_eq!(key.verify(&token, 1_000), Ok(bulk));
        assert_eq!(priority_ceiling("not a token"), None);
        assert_eq!(priority_ceiling("a.!!.c"), None);
    }

    #[test]
    fn signed_tokens_verify() {
        let key = DeviceTokenKey::new(SECRET).expect("key");
        let token = key.sign(&claims(2_000));
        assert_eq!(key.verify(&token, 1_000), Ok(claims(2_000)));
    }

    #[test]
    fn refuses_expired_tampered_foreign_and_malformed_tokens() {
        let key = DeviceTokenKey::new(SECRET).expect("key");
        let token = key.sign(&claims(2_000));
        // Expired once past `exp` by the clock skew (60 s by default).
        assert_eq!(key.verify(&token, 2_059), Ok(claims(2_000)));
        assert_eq!(key.verify(&token, 2_060), Err(TokenError::Expired));

        let other = DeviceTokenKey::new(b"another secret that is long enough!").expect("key");
        assert_eq!(other.verify(&token, 1_000), Err(TokenError::BadSignature));

        let (signing_input, _) = token.rsplit_once('.').expect("three parts");
        let forged_claims =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(9_999_999)).expect("encodes"));
        let header = signing_input.split('.').next().expect("header");
        let signature = token.rsplit('.').next().expect("signature");
        let forged = format!("{header}.{forged_claims}.{signature}");
        assert_eq!(key.verify(&forged, 1_000), Err(TokenError::BadSignature));

        assert_eq!(key.verify("", 1_000), Err(TokenError::Missing));
        assert_eq!(key.verify("a.b", 1_000), Err(TokenError::Malformed));
        assert_eq!(key.verify("a.b.c.d", 1_000), Err(TokenError::Malformed));
        assert_eq!(key.verify("!!.!!.!!", 1_000), Err(TokenError::Malformed));
    }

    #[test]
    fn not_before_clock_skew_and_the_longest_lifetime_are_enforced() {
        let key = DeviceTokenKey::new(b"a-device-secret-of-32-bytes-or-more!")
            .expect("key")
            .with_rules(TokenRules {
                clock_skew: std::time::Duration::from_secs(10),
                max_lifetime: std::time::Duration::from_secs(3600),
            });
        let later = DeviceClaims {
            nbf: Some(1_100),
            ..claims(2_000)
        };
        let token = key.sign(&later);
        assert_eq!(key.verify(&token, 1_089), Err(TokenError::NotYetValid));
        assert_eq!(key.verify(&token, 1_090), Ok(later));
        let token = key.sign(&claims(2_000));
        assert_eq!(key.verify(&token, 2_009), Ok(claims(2_000)));
        assert_eq!(key.verify(&token, 2_010), Err(TokenError::Expired));
        // At most an hour (plus the skew) ahead.
        let long = key.sign(&claims(1_000 + 3_600 + 10));
        assert!(key.verify(&long, 1_000).is_ok());
        let too_long = key.sign(&claims(1_000 + 3_600 + 11));
        assert_eq!(key.verify(&too_long, 1_000), Err(TokenError::TooLong));
        assert_eq!(TokenRules::default().validate(), Ok(()));
        let skewed = TokenRules {
            clock_skew: std::time::Duration::from_secs(601),
            ..TokenRules::default()
        };
        assert!(
            skewed
                .validate()
                .unwrap_err()
                .contains("--token-clock-skew-s")
        );
    }

    #[test]
    fn a_rotated_key_accepts_both_secrets_by_kid_until_the_old_one_is_removed() {
        const OLD: &[u8] = b"the-old-device-secret-of-32-bytes!!";
        const NEW: &[u8] = b"the-new-device-secret-of-32-bytes!!";
        let before = DeviceTokenKey::new(OLD).expect("key");
        let legacy = before.sign(&claims(2_000));
        // The new secret signs under its kid; the old one (no kid) still verifies.
        let during = DeviceTokenKey::new(NEW)
            .and_then(|key| key.with_kid("2026-12"))
            .and_then(|key| key.with_previous(OLD, None))
            .expect("key");
        let fresh = during.sign(&claims(2_000));
        assert_eq!(during.kid(), Some("2026-12"));
        assert!(fresh.starts_with(&encoded_header(Some("2026-12"))));
        assert_eq!(during.verify(&legacy, 1_000), Ok(claims(2_000)));
        assert_eq!(during.verify(&fresh, 1_000), Ok(claims(2_000)));
        // A node not rotated yet refuses the new kid; a node past the rotation the old tokens.
        assert_eq!(before.verify(&fresh, 1_000), Err(TokenError::UnknownKey));
        let after = DeviceTokenKey::new(NEW)
            .and_then(|key| key.with_kid("2026-12"))
            .expect("key");
        assert_eq!(after.verify(&fresh, 1_000), Ok(claims(2_000)));
        assert_eq!(after.verify(&legacy, 1_000), Err(TokenError::BadSignature));
        // A kid selects its secret: the old secret under the new kid does not verify.
        let (_, rest) = legacy.split_once('.').expect("header");
        let relabelled = format!("{}.{rest}", encoded_header(Some("2026-12")));
        assert_eq!(
            during.verify(&relabelled, 1_000),
            Err(TokenError::BadSignature)
        );
        let unknown = format!("{}.{rest}", encoded_header(Some("2025-01")));
        assert_eq!(during.verify(&unknown, 1_000), Err(TokenError::UnknownKey));
        // Both under kids, the previous one by its own.
        let old_kid = DeviceTokenKey::new(OLD)
            .and_then(|key| key.with_kid("2026-06"))
            .expect("key");
        let both = after
            .clone()
            .with_previous(OLD, Some("2026-06"))
            .expect("key");
        assert_eq!(
            both.verify(&old_kid.sign(&claims(2_000)), 1_000),
            Ok(claims(2_000))
        );
    }

    #[test]
    fn key_ids_must_be_plain_and_distinct() {
        let key = || DeviceTokenKey::new(SECRET).expect("key");
        for bad in ["", "a\"b", "with space", &"k".repeat(65)] {
            assert!(
                matches!(key().with_kid(bad), Err(SecretError::BadKid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            key().with_previous(SECRET, None),
            Err(SecretError::SameKid)
        ));
        let kid = key().with_kid("a").expect("kid");
        assert!(matches!(
            kid.with_previous(SECRET, Some("a")),
            Err(SecretError::SameKid)
        ));
        assert!(matches!(
            key().with_previous(b"short", Some("old")),
            Err(SecretError::TooShort { .. })
        ));
    }

    #[test]
    fn refuses_alg_none() {
        let key = DeviceTokenKey::new(SECRET).expect("key");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(2_000)).expect("encodes"));
        let token = format!("{header}.{body}.");
        assert_eq!(
            key.verify(&token, 1_000),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(DeviceTokenKey::new(b"short").is_err());
        assert!(AdminToken::new("short").is_err());
    }

    #[test]
    fn admin_token_matches_only_itself() {
        let token = AdminToken::new("an admin token that is long enough").expect("token");
        assert!(token.matches("an admin token that is long enough"));
        assert!(!token.matches("an admin token that is long enougH"));
        assert!(!token.matches(""));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
