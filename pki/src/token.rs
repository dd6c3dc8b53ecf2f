//! Join tokens in kubeadm's shape: `<id>.<secret>`, six and sixteen characters of `[a-z0-9]`.
//! The id names the token in lists and logs; only the secret's SHA-256 is stored.

use std::fmt;

use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const ID_LEN: usize = 6;
pub const SECRET_LEN: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a join token looks like abcdef.0123456789abcdef: six and sixteen characters of a-z and 0-9, joined by a dot")]
pub struct TokenFormatError;

fn random(n: usize) -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..n)
        .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn well_formed(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl Token {
    pub fn generate() -> Token {
        Token {
            id: random(ID_LEN),
            secret: random(SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<Token, TokenFormatError> {
        let (id, secret) = s.trim().split_once('.').ok_or(TokenFormatError)?;
        if !well_formed(id, ID_LEN) || !well_formed(secret, SECRET_LEN) {
            return Err(TokenFormatError);
        }
        Ok(Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// What the cluster stores: the secret's SHA-256, hex.
    pub fn secret_hash(&self) -> String {
        crate::ca::hex(&Sha256::digest(self.secret.as_bytes()))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id only: a token in a debug log must not be usable.
        write!(f, "Token({}.****)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let t = Token::generate();
        let s = t.to_string();
        assert_eq!(s.len(), 23);
        assert_eq!(Token::parse(&s), Ok(t.clone()));
        assert_ne!(Token::generate(), t);
        assert!(!format!("{t:?}").contains(&s[7..]));
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcdef0",
            "abc-ef.0123456789abcdef",
        ] {
            assert_eq!(Token::parse(bad), Err(TokenFormatError), "{bad}");
        }
        assert_eq!(t.secret_hash().len(), 64);
    }
}
