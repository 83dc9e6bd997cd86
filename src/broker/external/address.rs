//! The external broker's address: `tcp://`, `mqtt://` or `mqtts://` (TLS), host and port.

use std::fmt;

/// MQTT over TCP and over TLS, the IANA ports.
const MQTT_PORT: u16 = 1883;
const MQTTS_PORT: u16 = 8883;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid broker address '{address}': {reason}")]
pub struct InvalidAddress {
    pub address: String,
    pub reason: String,
}

impl BrokerAddress {
    pub fn parse(address: &str) -> Result<Self, InvalidAddress> {
        let invalid = |reason: &str| InvalidAddress {
            address: address.to_string(),
            reason: reason.to_string(),
        };

        let (scheme, rest) = address
            .split_once("://")
            .ok_or_else(|| invalid("expected tcp://HOST[:PORT], mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"))?;
        let tls = match scheme {
            "tcp" | "mqtt" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(invalid("the scheme must be tcp, mqtt or mqtts")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(invalid("give credentials in mqtt.username and mqtt.password, and no path"));
        }

        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal is bracketed; a colon inside the brackets is not a port.
            Some((host, port)) if !port.contains(']') => {
                let port = port.parse().map_err(|_| invalid("the port must be a number from 1 to 65535"))?;
                (host, port)
            }
            _ => (rest, if tls { MQTTS_PORT } else { MQTT_PORT }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        if port == 0 {
            return Err(invalid("the port must be a number from 1 to 65535"));
        }
        Ok(BrokerAddress {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_default_ports() {
        let plain = BrokerAddress::parse("tcp://broker.local").unwrap();
        assert_eq!((plain.port, plain.tls), (1883, false));
        let mqtt = BrokerAddress::parse("mqtt://10.0.0.5:1884").unwrap();
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("10.0.0.5", 1884));
        let tls = BrokerAddress::parse("mqtts://broker.local").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
    }

    #[test]
    fn ipv6_literal_keeps_its_colons() {
        let address = BrokerAddress::parse("tcp://[::1]:1999").unwrap();
        assert_eq!((address.host.as_str(), address.port), ("::1", 1999));
        assert_eq!(address.to_string(), "tcp://[::1]:1999");
    }

    #[test]
    fn invalid_addresses_are_rejected() {
        for address in ["broker:1883", "http://broker", "tcp://", "tcp://broker:0", "tcp://broker:x", "tcp://u:p@broker", "tcp://broker/path"] {
            assert!(BrokerAddress::parse(address).is_err(), "{address} should be rejected");
        }
    }
}
