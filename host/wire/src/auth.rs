//! The optional shared network password (`LMH_NETWORK_PASSWORD`).
//!
//! Newer upstream labmesh adds a `"password"` field to requests; a node that
//! has a password set refuses requests whose password differs. Comparison is
//! constant-time over the bytes, and any JSON value is accepted as input: a
//! number, `null` or an object is simply a wrong password.

use serde_json::Value;

/// Environment variable holding the shared password.
pub const PASSWORD_ENV: &str = "LMH_NETWORK_PASSWORD";

/// A node's password policy.
#[derive(Clone, Default)]
pub struct Password(Option<Vec<u8>>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Password(set)"
        } else {
            "Password(none)"
        })
    }
}

impl Password {
    /// No password: every request is accepted.
    pub fn none() -> Self {
        Password(None)
    }

    /// Require `secret` (an empty string means no password, as upstream).
    pub fn new(secret: &str) -> Self {
        if secret.is_empty() {
            Password(None)
        } else {
            Password(Some(secret.as_bytes().to_vec()))
        }
    }

    /// Read `LMH_NETWORK_PASSWORD`; unset, empty or non-UTF-8 values are
    /// treated as "no password" with a warning for the last.
    pub fn from_env() -> Self {
        match std::env::var(PASSWORD_ENV) {
            Ok(s) => Password::new(&s),
            Err(std::env::VarError::NotPresent) => Password(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                tracing::warn!("{PASSWORD_ENV} is not valid UTF-8; ignoring it");
                Password(None)
            }
        }
    }

    /// Whether a password is required.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The value to put in outgoing requests' `password` field.
    pub fn to_field(&self) -> Option<Value> {
        self.0
            .as_ref()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
    }

    /// Whether a request carrying `given` is allowed.
    pub fn accepts(&self, given: Option<&Value>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        match given {
            Some(Value::String(s)) => constant_time_eq(s.as_bytes(), expected),
            _ => false,
        }
    }
}

/// Compare two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy() {
        let none = Password::none();
        assert!(none.accepts(None));
        let p = Password::new("s3cret");
        assert!(p.accepts(Some(&Value::String("s3cret".into()))));
        assert!(!p.accepts(Some(&Value::String("s3cre".into()))));
        assert!(!p.accepts(Some(&Value::String("s3cret\0".into()))));
        assert!(!p.accepts(None));
        assert!(!p.accepts(Some(&serde_json::json!(12))));
        assert!(!p.accepts(Some(&serde_json::json!({"a": 1}))));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
    }
}
