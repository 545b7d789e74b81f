//! AES-256-GCM sealing of one secret field under a row's data key.
//!
//! # Security notes
//!
//! - **Format**: `version (1 byte) | nonce (12) | ciphertext | tag (16)`. Version 1 is the
//!   only one; an unknown version fails to open.
//! - **Nonces**: a fresh random 96-bit nonce from the OS CSPRNG per seal. Each row has its
//!   own data key and a key seals at most a handful of values per refresh, far below the
//!   2^32 random-nonce limit of NIST SP 800-38D.
//! - **Associated data** binds a ciphertext to its row and field: a length-prefixed encoding
//!   of a domain label, the format version, the user id, the provider and the field name.
//!   A ciphertext copied to another row or field fails to open.
//! - **Keys** live in [`SealingKey`] only: the 32 plaintext bytes, zeroized on drop. Each
//!   seal or open expands them into a cipher for that call alone (about a kilobyte, which
//!   the unwrap cache would otherwise hold per key), and the cipher zeroizes itself on drop
//!   (`aes`/`aes-gcm` with `zeroize`). `Debug` prints nothing secret.
//! - Every failure to open is the same opaque [`OpenError`]: no oracle on which check failed.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

/// The envelope format this build writes.
pub const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AAD_LABEL: &[u8] = b"token-store/field";

/// Which secret field of a row a ciphertext belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AccessToken,
    RefreshToken,
}

impl Field {
    fn name(self) -> &'static [u8] {
        match self {
            Self::AccessToken => b"access_token",
            Self::RefreshToken => b"refresh_token",
        }
    }
}

/// The row a ciphertext belongs to.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub user_id: &'a str,
    pub provider: &'a str,
}

/// The single, opaque failure of [`SealingKey::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext failed to authenticate")]
pub struct OpenError;

/// A row's data key, ready to seal and open. Zeroized on drop; redacted in `Debug`.
pub struct SealingKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl SealingKey {
    /// Takes the 32 plaintext key bytes; the caller's copy is zeroized by its own type.
    pub fn from_bytes(bytes: &Zeroizing<Vec<u8>>) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(bytes);
        Some(Self { bytes: key })
    }

    /// The key expanded for one call; zeroized when the call drops it.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.bytes.as_slice()))
    }

    pub fn seal(&self, row: RowRef<'_>, field: Field, plaintext: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        self.seal_with_nonce(&nonce, row, field, plaintext)
    }

    fn seal_with_nonce(
        &self,
        nonce: &Nonce<<Aes256Gcm as AeadCore>::NonceSize>,
        row: RowRef<'_>,
        field: Field,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let aad = associated_data(FORMAT_VERSION, row, field);
        let sealed = self
            .cipher()
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // aes-gcm fails only for plaintexts over 64 GiB; ours are at most 16 KiB.
            .expect("AES-GCM encryption of a bounded plaintext cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(
        &self,
        row: RowRef<'_>,
        field: Field,
        envelope: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if envelope.len() < 1 + NONCE_LEN + TAG_LEN || envelope[0] != FORMAT_VERSION {
            return Err(OpenError);
        }
        let (nonce, sealed) = envelope[1..].split_at(NONCE_LEN);
        let aad = associated_data(envelope[0], row, field);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey([REDACTED])")
    }
}

/// `label | version | len(user) user | len(provider) provider | len(field) field`, lengths as
/// big-endian u32, so no two distinct inputs share an encoding.
fn associated_data(version: u8, row: RowRef<'_>, field: Field) -> Vec<u8> {
    let parts: [&[u8]; 3] = [
        row.user_id.as_bytes(),
        row.provider.as_bytes(),
        field.name(),
    ];
    let mut aad =
        Vec::with_capacity(AAD_LABEL.len() + 1 + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(version);
    for part in parts {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealingKey {
        SealingKey::from_bytes(&Zeroizing::new(vec![byte; 32])).unwrap()
    }

    const ROW: RowRef<'static> = RowRef {
        user_id: "u1",
        provider: "google",
    };

    #[test]
    fn aes_256_gcm_known_answers() {
        // NIST GCM spec test cases 14 and 13: zero key, zero IV, no AAD.
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[0u8; 32]));
        let nonce = Nonce::from_slice(&[0u8; 12]);
        let out = cipher.encrypt(nonce, &[0u8; 16][..]).unwrap();
        assert_eq!(
            hex::encode(out),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
        let tag_only = cipher.encrypt(nonce, &[][..]).unwrap();
        assert_eq!(hex::encode(tag_only), "530f8afbc74536b9a963b4f1c4cb738b");
    }

    #[test]
    fn envelope_layout_is_version_nonce_ciphertext_tag() {
        let k = key(7);
        let nonce = Nonce::from_slice(&[9u8; 12]);
        let out = k.seal_with_nonce(nonce, ROW, Field::AccessToken, b"hello");
        assert_eq!(out.len(), 1 + 12 + 5 + 16);
        assert_eq!(out[0], FORMAT_VERSION);
        assert_eq!(&out[1..13], &[9u8; 12]);
        assert_eq!(&*k.open(ROW, Field::AccessToken, &out).unwrap(), b"hello");
    }

    #[test]
    fn seals_use_fresh_nonces() {
        let k = key(1);
        let a = k.seal(ROW, Field::AccessToken, b"same");
        let b = k.seal(ROW, Field::AccessToken, b"same");
        assert_ne!(a[1..13], b[1..13]);
        assert_ne!(a, b);
    }

    #[test]
    fn tampering_fails_with_one_opaque_error() {
        let k = key(1);
        let sealed = k.seal(ROW, Field::AccessToken, b"secret-token");

        let mut flipped_ct = sealed.clone();
        flipped_ct[14] ^= 1;
        let mut flipped_tag = sealed.clone();
        *flipped_tag.last_mut().unwrap() ^= 1;
        let mut flipped_version = sealed.clone();
        flipped_version[0] = 2;
        let other_row = RowRef {
            user_id: "u2",
            provider: "google",
        };
        let other_provider = RowRef {
            user_id: "u1",
            provider: "microsoft",
        };

        assert_eq!(k.open(ROW, Field::AccessToken, &flipped_ct), Err(OpenError));
        assert_eq!(
            k.open(ROW, Field::AccessToken, &flipped_tag),
            Err(OpenError)
        );
        assert_eq!(
            k.open(ROW, Field::AccessToken, &flipped_version),
            Err(OpenError)
        );
        assert_eq!(k.open(ROW, Field::RefreshToken, &sealed), Err(OpenError));
        assert_eq!(
            k.open(other_row, Field::AccessToken, &sealed),
            Err(OpenError)
        );
        assert_eq!(
            k.open(other_provider, Field::AccessToken, &sealed),
            Err(OpenError)
        );
        assert_eq!(
            key(2).open(ROW, Field::AccessToken, &sealed),
            Err(OpenError)
        );
        assert_eq!(
            k.open(ROW, Field::AccessToken, &sealed[..20]),
            Err(OpenError)
        );
        assert!(k.open(ROW, Field::AccessToken, &sealed).is_ok());
    }

    #[test]
    fn associated_data_is_unambiguous() {
        let a = associated_data(
            1,
            RowRef {
                user_id: "ab",
                provider: "c",
            },
            Field::AccessToken,
        );
        let b = associated_data(
            1,
            RowRef {
                user_id: "a",
                provider: "bc",
            },
            Field::AccessToken,
        );
        assert_ne!(a, b);
    }

    #[test]
    fn sealing_key_debug_is_redacted() {
        assert_eq!(format!("{:?}", key(42)), "SealingKey([REDACTED])");
    }
}
