//! Where a peer is reached: directly at a UDP address, or through a Nucleus relay (the
//! Nucleus address and the peer's relay tag).

use std::fmt;
use std::net::SocketAddr;

use omni_proto::wire::relay::Tag;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Direct(SocketAddr),
    Relay { via: SocketAddr, tag: Tag },
}

impl Endpoint {
    /// The UDP address packets are sent to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Direct(a) | Endpoint::Relay { via: a, .. } => *a,
        }
    }

    /// The relay tag to put in front of packets, for a relayed endpoint.
    pub fn relay_tag(&self) -> Option<Tag> {
        match self {
            Endpoint::Direct(_) => None,
            Endpoint::Relay { tag, .. } => Some(*tag),
        }
    }

    pub fn is_relay(&self) -> bool {
        matches!(self, Endpoint::Relay { .. })
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Direct(a)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Direct(a) => write!(f, "{a}"),
            Endpoint::Relay { via, tag } => {
                write!(f, "relay {via} #")?;
                tag.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// Parses what `Display` writes: `ADDR:PORT`, or `relay ADDR:PORT #TAGHEX`.
impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an endpoint (host:port, or relay host:port #tag)");
        match s.strip_prefix("relay ") {
            None => s.parse::<SocketAddr>().map(Endpoint::Direct).map_err(|_| bad()),
            Some(rest) => {
                let (via, tag) = rest.split_once(" #").ok_or_else(bad)?;
                let via = via.parse().map_err(|_| bad())?;
                if tag.len() != 16 {
                    return Err(bad());
                }
                let mut t = [0u8; 8];
                for (i, b) in t.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&tag[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
                }
                Ok(Endpoint::Relay { via, tag: t })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for s in ["10.0.0.1:51820", "[fd00::1]:9", "relay 192.0.2.1:51820 #0102030405060708"] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        let r: Endpoint = "relay 192.0.2.1:51820 #0102030405060708".parse().unwrap();
        assert!(r.is_relay());
        assert_eq!(r.relay_tag(), Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(r.addr(), "192.0.2.1:51820".parse().unwrap());
        assert!("relay x".parse::<Endpoint>().is_err());
        assert!("10.0.0.1".parse::<Endpoint>().is_err());
    }
}
