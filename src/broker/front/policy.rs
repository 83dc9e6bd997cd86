//! The access policy of the embedded broker: whether a client may publish, subscribe or
//! connect at all, decided once per connection from its CONNECT packet.

use rumqttd::protocol::Login;

use super::Credentials;
use crate::stats::ConnectRejectReason;

/// The publisher login and whether subscribing needs it too.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// `None`: authentication is off and every client may publish.
    pub publisher: Option<Credentials>,
    pub subscribe_requires_login: bool,
}

/// Permission of a client once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Publishes and subscribes; its traffic is relayed without parsing.
    Publisher,
    /// Subscribes only; the connection ends at its first PUBLISH.
    Subscriber,
    Rejected(ConnectRejectReason),
}

impl AuthPolicy {
    /// Decides from the client's login and whether it set a will message. A will is a
    /// publish the broker makes when the client goes away, so only publishers may set one.
    pub fn admit(&self, login: Option<&Login>, has_will: bool) -> Admission {
        let Some(publisher) = &self.publisher else {
            return Admission::Publisher;
        };

        match login {
            Some(login) if publisher.matches(&login.username, &login.password) => Admission::Publisher,
            Some(_) => Admission::Rejected(ConnectRejectReason::BadCredentials),
            None if self.subscribe_requires_login => Admission::Rejected(ConnectRejectReason::NotAuthorized),
            None if has_will => Admission::Rejected(ConnectRejectReason::WillNotAuthorized),
            None => Admission::Subscriber,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(subscribe_requires_login: bool) -> AuthPolicy {
        AuthPolicy {
            publisher: Some(Credentials {
                username: "collector".into(),
                password: "s3cret".into(),
            }),
            subscribe_requires_login,
        }
    }

    fn login(username: &str, password: &str) -> Login {
        Login {
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn without_publisher_login_everyone_publishes() {
        let open = AuthPolicy {
            publisher: None,
            subscribe_requires_login: false,
        };
        assert_eq!(open.admit(None, true), Admission::Publisher);
        assert_eq!(open.admit(Some(&login("any", "thing")), false), Admission::Publisher);
    }

    #[test]
    fn matching_login_publishes() {
        assert_eq!(policy(false).admit(Some(&login("collector", "s3cret")), true), Admission::Publisher);
        assert_eq!(policy(true).admit(Some(&login("collector", "s3cret")), false), Admission::Publisher);
    }

    #[test]
    fn wrong_login_rejected_when_subscribing_open() {
        let wrong = login("collector", "guess");
        assert_eq!(
            policy(false).admit(Some(&wrong), false),
            Admission::Rejected(ConnectRejectReason::BadCredentials)
        );
    }

    #[test]
    fn anonymous_client_subscribes_unless_login_is_required() {
        assert_eq!(policy(false).admit(None, false), Admission::Subscriber);
        assert_eq!(
            policy(true).admit(None, false),
            Admission::Rejected(ConnectRejectReason::NotAuthorized)
        );
    }

    #[test]
    fn anonymous_client_cannot_set_a_will() {
        assert_eq!(
            policy(false).admit(None, true),
            Admission::Rejected(ConnectRejectReason::WillNotAuthorized)
        );
    }
}
