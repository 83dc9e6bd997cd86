//! MQTT credentials: the publisher login from the configuration and the internal login the
//! front gives the rumqttd listeners behind it.
//!
//! A password never appears in `Debug` output, and logins are compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq;

/// A username and password pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// Creates a random login for the internal listeners; it exists only in this process.
    pub fn random() -> Credentials {
        Credentials {
            username: format!("lokstream-front-{}", random_hex()),
            password: random_hex(),
        }
    }

    /// Checks a presented login in time that depends only on the lengths of the values,
    /// so a client cannot find the password byte by byte from response times.
    pub fn matches(&self, username: &str, password: &str) -> bool {
        let username_ok = self.username.as_bytes().ct_eq(username.as_bytes());
        let password_ok = self.password.as_bytes().ct_eq(password.as_bytes());
        (username_ok & password_ok).into()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"********")
            .finish()
    }
}

/// 128 random bits as 32 hex digits.
fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_login() {
        let credentials = Credentials {
            username: "collector".into(),
            password: "s3cret".into(),
        };
        assert!(credentials.matches("collector", "s3cret"));
        assert!(!credentials.matches("collector", "s3cres"));
        assert!(!credentials.matches("collector", "s3cret "));
        assert!(!credentials.matches("Collector", "s3cret"));
        assert!(!credentials.matches("", ""));
    }

    #[test]
    fn debug_output_hides_password() {
        let credentials = Credentials {
            username: "collector".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("collector"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn random_logins_differ() {
        assert_ne!(Credentials::random(), Credentials::random());
    }
}
