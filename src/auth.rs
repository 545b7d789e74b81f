//! Callers are configured clients, each known by the SHA-256 of its API key.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Read,
    Write,
    Refresh,
    Revoke,
    ReadRefreshToken,
    /// Operators: every grant's health and the webhook deliveries (never a token).
    Inspect,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Refresh => "refresh",
            Self::Revoke => "revoke",
            Self::ReadRefreshToken => "read_refresh_token",
            Self::Inspect => "inspect",
        }
    }
}

/// A caller, authenticated.
#[derive(Clone)]
pub struct Client {
    pub name: String,
    key_sha256: [u8; 32],
    permissions: HashSet<Permission>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `key_sha256_hex` is the lowercase or uppercase hex SHA-256 of the client's API key.
    pub fn new(
        name: String,
        key_sha256_hex: &str,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Result<Self, String> {
        let mut key_sha256 = [0u8; 32];
        hex::decode_to_slice(key_sha256_hex.trim(), &mut key_sha256)
            .map_err(|_| format!("client {name:?}: key_sha256 must be 64 hex digits"))?;
        Ok(Self {
            name,
            key_sha256,
            permissions: permissions.into_iter().collect(),
        })
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

#[derive(Debug, Clone)]
pub struct Authenticator {
    clients: Vec<Arc<Client>>,
}

impl Authenticator {
    pub fn new(clients: Vec<Client>) -> Self {
        Self {
            clients: clients.into_iter().map(Arc::new).collect(),
        }
    }

    /// The client whose key hash matches. Every configured hash is compared, each in
    /// constant time, so the time taken says nothing about which (if any) matched.
    pub fn authenticate(&self, presented_key: &str) -> Option<Arc<Client>> {
        let digest: [u8; 32] = Sha256::digest(presented_key.as_bytes()).into();
        let mut found = None;
        for client in &self.clients {
            if bool::from(client.key_sha256.ct_eq(&digest)) {
                found = Some(client);
            }
        }
        found.cloned()
    }
}

/// The hex SHA-256 of an API key, as the configuration holds it.
pub fn key_hash_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_by_key_hash_only() {
        let auth = Authenticator::new(vec![
            Client::new("a".into(), &key_hash_hex("key-a"), [Permission::Read]).unwrap(),
            Client::new("b".into(), &key_hash_hex("key-b"), [Permission::Write]).unwrap(),
        ]);
        assert_eq!(auth.authenticate("key-a").unwrap().name, "a");
        assert_eq!(auth.authenticate("key-b").unwrap().name, "b");
        assert!(auth.authenticate("key-c").is_none());
        assert!(auth.authenticate("").is_none());
        assert!(auth.authenticate("key-a").unwrap().has(Permission::Read));
        assert!(!auth.authenticate("key-a").unwrap().has(Permission::Write));
    }

    #[test]
    fn a_hash_differing_in_one_late_byte_does_not_authenticate() {
        for byte in [4, 8, 16, 31] {
            let mut hash = Sha256::digest(b"the-key").to_vec();
            hash[byte] ^= 0x01;
            let auth = Authenticator::new(vec![Client::new(
                "near".into(),
                &hex::encode(&hash),
                [Permission::Read],
            )
            .unwrap()]);
            assert!(auth.authenticate("the-key").is_none(), "byte {byte}");
        }
    }

    #[test]
    fn rejects_malformed_hashes() {
        assert!(Client::new("x".into(), "abc", []).is_err());
    }

    #[test]
    fn client_debug_omits_the_key_hash() {
        let hash = key_hash_hex("k");
        let client = Client::new("svc".into(), &hash, [Permission::Read]).unwrap();
        let debug = format!("{client:?}");
        assert_eq!(debug, r#"Client { name: "svc", permissions: {Read}, .. }"#);
    }
}
