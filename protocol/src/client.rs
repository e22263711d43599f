//! Who a request is from, for the per-client limits: the gateway's (connections, rates, budget
//! share) and the main publisher's (registrations).
//!
//! Behind a load balancer every connection comes from the balancer, so the client's address is
//! the one the balancer names in `Forwarded` (RFC 7239) or `X-Forwarded-For`, and only when the
//! connection comes from an address in `trusted_proxies`: from anyone else those headers are
//! the client's own words and are ignored. The headers rather than the PROXY protocol because
//! they are what the common HTTP balancers speak (AWS ALB, Google Cloud's HTTP(S) load
//! balancer, Azure Application Gateway, nginx, HAProxy and Envoy in HTTP mode, Kubernetes
//! ingress controllers), most of them only; the PROXY protocol is the L4 balancers' (AWS NLB)
//! and would add a parser before hyper's on every connection.

use http::{header, HeaderMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The key a client is counted under: its IPv4 address, or the /64 of its IPv6 address, since
/// a host is given a whole /64 and may use any address in it. An IPv4-mapped IPv6 address is
/// its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The addresses and networks whose forwarding headers are believed.
#[derive(Debug, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

/// A `trusted_proxies` entry that is neither an address nor a CIDR network; each tier names its
/// own setting around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotANetwork(pub String);

impl std::fmt::Display for NotANetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not an address or a CIDR network", self.0)
    }
}

impl std::error::Error for NotANetwork {}

impl TrustedProxies {
    /// From `trusted_proxies`: addresses (`10.0.0.7`, `2001:db8::1`) and networks in CIDR
    /// form (`10.0.0.0/8`, `2001:db8::/32`).
    pub fn new(entries: &[String]) -> Result<Self, NotANetwork> {
        entries
            .iter()
            .map(|entry| {
                let bad = || NotANetwork(entry.clone());
                let (addr, len) = match entry.split_once('/') {
                    Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
                    None => (entry.as_str(), None),
                };
                let ip: IpAddr = addr.parse().map_err(|_| bad())?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = len.unwrap_or(max);
                if len > max {
                    return Err(bad());
                }
                Ok((ip, len))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix(u32::from(n).into(), u32::from(a).into(), 32, len)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix(u128::from(n), u128::from(a), 128, len),
            _ => false,
        })
    }

    /// The client behind `peer`: the nearest hop of the forwarding header that is not a
    /// trusted proxy (walking from the right, the hop each proxy appended), or `peer` when it
    /// is not trusted itself. An unreadable hop stops the walk at the proxy that passed it.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.contains(peer) {
            return peer;
        }
        let forwarded = headers.get_all(header::FORWARDED);
        let hops: Vec<&str> = if forwarded.iter().next().is_some() {
            forwarded
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .map_or("", |(_, v)| v.trim())
                })
                .collect()
        } else {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect()
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            if !self.contains(client) {
                break;
            }
            match node_ip(hop) {
                Some(ip) => client = ip,
                None => break,
            }
        }
        client
    }
}

fn prefix(net: u128, addr: u128, bits: u32, len: u8) -> bool {
    let len = u32::from(len);
    len == 0 || (net ^ addr) >> (bits - len) == 0
}

/// The address of a `Forwarded` node (`192.0.2.60`, `"[2001:db8::17]:4711"`, `"192.0.2.60:80"`)
/// or an `X-Forwarded-For` entry (the same, unquoted); None for `unknown`, an obfuscated
/// `_name` or anything else.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_per_64_and_ipv4_per_address() {
        let key = |s: &str| client_key(ip(s)).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn trusted_proxies_are_addresses_and_networks() {
        let trusted = TrustedProxies::new(&[
            "10.0.0.0/8".into(),
            "192.0.2.7".into(),
            "2001:db8::/32".into(),
        ])
        .unwrap();
        for (addr, expected) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::ffff:10.0.0.1", true),
            ("2001:db8:ffff::1", true),
            ("2001:db9::1", false),
        ] {
            assert_eq!(trusted.contains(ip(addr)), expected, "{addr}");
        }
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x", "::/129"] {
            assert_eq!(
                TrustedProxies::new(&[bad.into()]).unwrap_err().to_string(),
                format!("{bad:?} is not an address or a CIDR network")
            );
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_only_a_trusted_peer_is_believed() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".into()]).unwrap();
        // (peer, header lines, the client)
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: [Case; 9] = [
            // Not a proxy: its headers are its own words.
            (
                "198.51.100.9",
                &[("x-forwarded-for", "203.0.113.1")],
                "198.51.100.9",
            ),
            ("10.0.0.1", &[], "10.0.0.1"),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "203.0.113.1")],
                "203.0.113.1",
            ),
            // What the client wrote on the left is passed over for what the proxies appended.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "1.2.3.4, 203.0.113.1, 10.0.0.2")],
                "203.0.113.1",
            ),
            (
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "203.0.113.1"),
                ],
                "203.0.113.1",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "garbage, 10.0.0.2")],
                "10.0.0.2",
            ),
            (
                "10.0.0.1",
                &[(
                    "forwarded",
                    r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https"#,
                )],
                "2001:db8:cafe::17",
            ),
            // Forwarded wins over X-Forwarded-For when a proxy sends both.
            (
                "10.0.0.1",
                &[
                    ("forwarded", "for=192.0.2.60:8080"),
                    ("x-forwarded-for", "203.0.113.1"),
                ],
                "192.0.2.60",
            ),
            ("10.0.0.1", &[("forwarded", "for=unknown")], "10.0.0.1"),
        ];
        for (peer, h, expected) in cases {
            assert_eq!(
                trusted.client(ip(peer), &headers(h)),
                ip(expected),
                "{peer} {h:?}"
            );
        }
    }
}
