//! Bootstrap tokens: how a workload that has no certificate yet proves who
//! it is to the CA, for local and VM use (on Kubernetes its projected
//! service-account token does, through TokenReview). The control plane
//! issues one per namespace and service account (`gridmesh-control token`)
//! and recognises its own by an HMAC-SHA256 under a key only it holds, so
//! nothing is stored per token.
//!
//! A token reads `gm1.<namespace>.<service-account>.<expiry>.<mac>`: the
//! grant is visible to whoever holds it (a token is a credential, not a
//! secret about its contents), the MAC covers everything before it, and the
//! expiry is Unix seconds.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

const VERSION: &str = "gm1";
/// Random bytes in a token key.
const KEY_BYTES: usize = 32;

/// Who a valid token says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a gridmesh bootstrap token")]
    Malformed,
    #[error("the token was not issued by this control plane (its signature does not verify)")]
    Forged,
    #[error("the token expired")]
    Expired,
    #[error(
        "{0:?} is not a namespace or service-account name (lower-case letters, digits and '-')"
    )]
    BadName(String),
}

/// The key tokens are signed with.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    /// A key from its stored bytes (hex).
    pub fn from_hex(text: &str) -> Option<TokenKey> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 {
            return None;
        }
        let bytes = (0..KEY_BYTES)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// A new random key and its hex form, to be stored.
    pub fn generate() -> Result<(TokenKey, String), ring::error::Unspecified> {
        let mut bytes = [0u8; KEY_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok((TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)), hex))
    }

    pub fn issue(&self, grant: &Grant, valid_for: Duration) -> Result<String, TokenError> {
        for name in [&grant.namespace, &grant.service_account] {
            if !valid_name(name) {
                return Err(TokenError::BadName(name.clone()));
            }
        }
        let expiry = (SystemTime::now() + valid_for)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = format!(
            "{VERSION}.{}.{}.{expiry}",
            grant.namespace, grant.service_account
        );
        let mac = hmac::sign(&self.0, claims.as_bytes());
        Ok(format!("{claims}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())))
    }

    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
        let token = token.trim();
        let (claims, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        let parts: Vec<&str> = claims.split('.').collect();
        let [VERSION, namespace, service_account, expiry] = parts.as_slice() else {
            return Err(TokenError::Malformed);
        };
        // Checked before anything else is believed.
        hmac::verify(&self.0, claims.as_bytes(), &mac).map_err(|_| TokenError::Forged)?;
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(Grant {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }
}

/// Kubernetes' DNS-label names, which also keeps '.' out of the token.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            namespace: "blocks".into(),
            service_account: "classifier".into(),
        }
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let (key, hex) = TokenKey::generate().unwrap();
        let token = key.issue(&grant(), Duration::from_secs(60)).unwrap();
        assert!(token.starts_with("gm1.blocks.classifier."), "{token}");
        assert_eq!(key.verify(&token, SystemTime::now()), Ok(grant()));
        // The stored key is the same key.
        let again = TokenKey::from_hex(&hex).unwrap();
        assert_eq!(again.verify(&token, SystemTime::now()), Ok(grant()));
        let later = SystemTime::now() + Duration::from_secs(61);
        assert_eq!(key.verify(&token, later), Err(TokenError::Expired));
    }

    #[test]
    fn altered_foreign_and_garbled_tokens_are_refused() {
        let (key, _) = TokenKey::generate().unwrap();
        let (other, _) = TokenKey::generate().unwrap();
        let token = key.issue(&grant(), Duration::from_secs(60)).unwrap();
        let now = SystemTime::now();
        let promoted = token.replace(".classifier.", ".admin.");
        assert_eq!(key.verify(&promoted, now), Err(TokenError::Forged));
        assert_eq!(other.verify(&token, now), Err(TokenError::Forged));
        for garbled in [
            "",
            "gm1",
            "gm1.a.b.c",
            "Bearer x",
            "gm1.a.b.1.!!!",
            "gm2.a.b.1.AAAA",
        ] {
            assert!(key.verify(garbled, now).is_err(), "{garbled:?}");
        }
        let bad = Grant {
            namespace: "a.b".into(),
            service_account: "x".into(),
        };
        assert_eq!(
            key.issue(&bad, Duration::from_secs(1)),
            Err(TokenError::BadName("a.b".into()))
        );
        assert!(TokenKey::from_hex("abc").is_none());
    }
}
