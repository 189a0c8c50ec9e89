//! Password credentials as SCRAM-SHA-256 stores them (RFC 5802, RFC 7677): a random salt, an
//! iteration count, and two keys derived with PBKDF2-HMAC-SHA256. The password itself is
//! never stored, logged or replicated: the node that takes it derives the credential and
//! proposes only that. Checking a password recomputes the stored key; the Kafka listener
//! can run a full SCRAM exchange over the same credential, without the password on the wire.

use std::num::NonZeroU32;

use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};

/// PBKDF2 iterations of new credentials (Kafka's SCRAM default is 4,096).
pub const ITERATIONS: u32 = 8192;
/// Fewest iterations a credential may have.
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a credential may have (checking a password costs this many HMACs).
pub const MAX_ITERATIONS: u32 = 1 << 20;
/// Bytes of a new salt.
const SALT_BYTES: usize = 16;
/// Longest password accepted.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user's stored credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The salt (hex).
    pub salt: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `SHA-256(HMAC(SaltedPassword, "Client Key"))` (hex).
    pub stored_key: String,
    /// `HMAC(SaltedPassword, "Server Key")` (hex).
    pub server_key: String,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The bytes of lower-case or upper-case hex, if it is hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `count` random bytes from the system's generator.
pub(crate) fn random_bytes(count: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; count];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(bytes)
}

/// A new password of 24 letters and digits (about 140 bits), from the system's generator.
pub fn random_password() -> Result<String, String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    Ok(random_bytes(24)?
        .into_iter()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect())
}

fn salted(password: &str, salt: &[u8], iterations: NonZeroU32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

fn keys(salted_password: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salted_password);
    let client_key = hmac::sign(&key, b"Client Key");
    let server_key = hmac::sign(&key, b"Server Key");
    let stored = digest::digest(&digest::SHA256, client_key.as_ref());
    let mut stored_key = [0u8; 32];
    stored_key.copy_from_slice(stored.as_ref());
    let mut server = [0u8; 32];
    server.copy_from_slice(server_key.as_ref());
    (stored_key, server)
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks what a password must be: not empty, at most [`MAX_PASSWORD_BYTES`].
pub fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

impl ScramCredential {
    /// A new credential for `password`, with a fresh salt.
    pub fn new(password: &str) -> Result<ScramCredential, String> {
        check_password(password)?;
        let salt = random_bytes(SALT_BYTES)?;
        let iterations = NonZeroU32::new(ITERATIONS).ok_or("zero iterations")?;
        let (stored_key, server_key) = keys(&salted(password, &salt, iterations));
        Ok(ScramCredential {
            salt: hex(&salt),
            iterations: ITERATIONS,
            stored_key: hex(&stored_key),
            server_key: hex(&server_key),
        })
    }

    /// Whether the credential is well formed (a snapshot or command could carry anything).
    pub fn validate(&self) -> Result<(), String> {
        let salt = unhex(&self.salt).ok_or("the salt is not hex")?;
        if !(8..=64).contains(&salt.len()) {
            return Err(format!("a salt of {} bytes", salt.len()));
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "{} iterations is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}",
                self.iterations
            ));
        }
        for key in [&self.stored_key, &self.server_key] {
            if unhex(key).is_none_or(|k| k.len() != 32) {
                return Err("a key is not 32 bytes of hex".into());
            }
        }
        Ok(())
    }

    /// Whether `password` is this credential's.
    pub fn verify(&self, password: &str) -> bool {
        let (Some(salt), Some(stored), Some(iterations)) = (
            unhex(&self.salt),
            unhex(&self.stored_key),
            NonZeroU32::new(self.iterations),
        ) else {
            return false;
        };
        if password.len() > MAX_PASSWORD_BYTES || self.iterations > MAX_ITERATIONS {
            return false;
        }
        let (stored_key, _) = keys(&salted(password, &salt, iterations));
        same(&stored_key, &stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_knows_its_password_only() {
        let c = ScramCredential::new("correct horse").unwrap();
        c.validate().unwrap();
        assert!(c.verify("correct horse"));
        assert!(!c.verify("correct horsE"));
        assert!(!c.verify(""));
        let again = ScramCredential::new("correct horse").unwrap();
        assert_ne!(c.salt, again.salt, "every credential has its own salt");
        assert!(ScramCredential::new("").is_err());
        assert!(ScramCredential::new(&"x".repeat(2000)).is_err());
    }

    /// RFC 7677's test vector: user "user", password "pencil", salt
    /// `W22ZaJ0SNY7soEsUEjb6gQ==`, 4096 iterations.
    #[test]
    fn keys_follow_rfc_7677() {
        let salt = [
            0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36,
            0xfa, 0x81,
        ];
        let salted = salted("pencil", &salt, NonZeroU32::new(4096).unwrap());
        let (_, server_key) = keys(&salted);
        // The exchange's ServerSignature = HMAC(ServerKey, AuthMessage), in the RFC
        // 6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=.
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &server_key),
            auth_message.as_bytes(),
        );
        assert_eq!(
            hex(signature.as_ref()),
            "eabae24d1062db75a9451ff0b6ea7e98c8546549ff741e672d3251b2397de46e"
        );
    }

    #[test]
    fn malformed_credentials_are_refused() {
        let good = ScramCredential::new("pw").unwrap();
        for bad in [
            ScramCredential {
                salt: "zz".into(),
                ..good.clone()
            },
            ScramCredential {
                iterations: 1,
                ..good.clone()
            },
            ScramCredential {
                iterations: u32::MAX,
                ..good.clone()
            },
            ScramCredential {
                stored_key: "00".into(),
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(!bad.verify("pw"));
        }
    }
}
