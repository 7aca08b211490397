//! The synthetic addresses leash's resolver answers with, and the names they stand for.
//!
//! Each allowed name gets its own address from `198.18.0.0/15` (RFC 2544's benchmarking range,
//! never routed on the Internet), handed out in order and kept for the sandbox's life, so a
//! client that cached an answer still reaches the same name. A redirected connection to one of
//! them is judged, and dialled, by that name: the proxy resolves it itself, as for a CONNECT.
//! Why synthetic addresses rather than real answers: the resolver then never asks anyone
//! anything (a query cannot carry data out, not even to an allowed name's servers), and an
//! address maps back to exactly one name (real ones are shared by every site on a CDN).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// First address handed out (198.18.0.1) and how many there are.
const FIRST: u32 = u32::from_be_bytes([198, 18, 0, 1]);
const NETWORK: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const PREFIX_LEN: u32 = 15;
/// Names one sandbox may have addresses for: a bound on the table, far above any real session.
pub const MAX_NAMES: usize = 65_536;

/// Name <-> synthetic address, for one sandbox.
#[derive(Default)]
pub struct SyntheticNames {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl SyntheticNames {
    /// The address of `name`, given one when it has none yet (then `true`); `None` once the
    /// table is full. The policy's exact names get theirs first ([`Self::reserve`]), so a full
    /// table (wildcard names asked for by the thousand) never takes them away.
    pub fn address_of(&self, name: &str) -> Option<(Ipv4Addr, bool)> {
        let mut t = self.inner.lock().ok()?;
        if let Some(addr) = t.by_name.get(name) {
            return Some((*addr, false));
        }
        if t.by_name.len() >= MAX_NAMES {
            return None;
        }
        let addr = Ipv4Addr::from(FIRST + t.by_name.len() as u32);
        t.by_name.insert(name.to_owned(), addr);
        t.by_addr.insert(addr, name.to_owned());
        Some((addr, true))
    }

    /// Gives each of `names` its address now.
    pub fn reserve<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            let _ = self.address_of(name);
        }
    }

    /// The name `addr` was handed out for.
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<String> {
        self.inner.lock().ok()?.by_addr.get(&addr).cloned()
    }
}

/// Whether `addr` lies in the synthetic range (handed out or not).
pub fn is_synthetic(addr: Ipv4Addr) -> bool {
    u32::from(addr) >> (32 - PREFIX_LEN) == NETWORK >> (32 - PREFIX_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_keeps_its_own_address() {
        let names = SyntheticNames::default();
        let (a, new) = names.address_of("a.example").unwrap();
        assert!(new);
        let (b, _) = names.address_of("b.example").unwrap();
        assert_ne!(a, b);
        assert_eq!(names.address_of("a.example"), Some((a, false)));
        assert_eq!(names.name_of(b).as_deref(), Some("b.example"));
        assert!(is_synthetic(a) && is_synthetic(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_synthetic(Ipv4Addr::new(198, 20, 0, 1)) && !is_synthetic(Ipv4Addr::LOCALHOST));
        assert_eq!(names.name_of(Ipv4Addr::new(198, 18, 9, 9)), None);
    }

    #[test]
    fn the_table_is_bounded_and_stays_in_range() {
        let names = SyntheticNames::default();
        names.reserve(["exact.example"]);
        let mut last = None;
        for i in 0..MAX_NAMES {
            last = names.address_of(&format!("n{i}"));
        }
        assert!(last.is_none(), "the reserved name took one of the addresses");
        assert_eq!(names.address_of("one-more"), None);
        assert!(names.address_of("n0").is_some(), "names already given keep their address");
        assert!(names.address_of("exact.example").is_some_and(|(a, _)| is_synthetic(a)), "reserved names stay");
    }
}
