//! Which hosts and addresses an `http(s)://` source may reach (SSRF guard).
//!
//! A host named in `INGEST_HTTP_SOURCE_HOSTS` is open, whatever it resolves
//! to (loopback included). When that list is set, no other host is. Any
//! other host must resolve only to public addresses: loopback, private
//! (RFC 1918, CGNAT), link-local (169.254.169.254 included), unique-local
//! and site-local IPv6, multicast, broadcast, reserved, unspecified, and the
//! IPv4-mapped/-compatible/NAT64/6to4 forms of those are refused. The check
//! runs on every address of every hop: IP literals when a URL is checked,
//! names in [`GuardedResolver`], the resolver the HTTP client connects
//! through, so the connection goes to the address that was checked (a DNS
//! answer cannot change between the check and the connect).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The hosts named in the allow-list (lower case), if one is set.
pub type AllowedHosts = Option<Arc<Vec<String>>>;

/// Whether an address may only be reached when its host is named in the
/// allow-list.
pub fn is_denied(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_denied_v4(v4),
        IpAddr::V6(v6) => is_denied_v6(v6),
    }
}

fn is_denied_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                    // "this network", 0.0.0.0 included
        || a == 10                            // private
        || a == 127                           // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)             // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private 172.16/12
        || (a == 192 && b == 168)             // private
        || (a == 192 && b == 0 && c == 0)     // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18/15
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn is_denied_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return is_denied_v4(v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (seg[0] & 0xff00) == 0xff00 // multicast ff00::/8
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0]) // discard 100::/64
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4
/// (`2002:AABB:CCDD::`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let low = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    match seg {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // IPv4-compatible; `::` and `::1` read as 0.0.0.0 and 0.0.0.1, denied too.
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Whether `host` (as the URL parser normalised it: lower case, IPv6 in
/// brackets) is named in the allow-list.
pub fn is_named(allowed: &AllowedHosts, host: &str) -> bool {
    allowed
        .as_ref()
        .is_some_and(|list| list.iter().any(|a| a == host))
}

/// A host's addresses were refused.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to an address that is not allowed (loopback, private, link-local or reserved); name the host in INGEST_HTTP_SOURCE_HOSTS to allow it")]
pub struct AddressRefused {
    pub host: String,
}

/// The HTTP client's resolver: a name in the allow-list resolves as usual;
/// any other name is refused if ANY of its addresses is denied, before a
/// connection is made. The client connects only to the addresses returned
/// here.
pub struct GuardedResolver {
    pub allowed: AllowedHosts,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let open = is_named(&self.allowed, &host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !open && addrs.iter().any(|a| is_denied(a.ip())) {
                return Err(Box::new(AddressRefused { host }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether an error (or one of its causes) is a refusal by the resolver.
pub fn refused_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<AddressRefused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_denied() {
        for denied in [
            "0.0.0.0",
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "10.213.47.10",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            assert!(is_denied(ip), "{denied} must be denied");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.167.1.1",
            "169.253.1.1",
            "223.255.255.254",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(!is_denied(ip), "{public} must be allowed");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_denied_addresses_unless_named() {
        let guarded = GuardedResolver { allowed: None };
        let e = match guarded.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(refused_in(e.as_ref()).is_some(), "{e}");
        let open = GuardedResolver {
            allowed: Some(Arc::new(vec!["localhost".into()])),
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
