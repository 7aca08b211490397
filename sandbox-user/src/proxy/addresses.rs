//! Which private addresses a connection may reach: the matching endpoint's `allowed_ips`, plus
//! the address itself when the endpoint names an IP literal (writing `host: 127.0.0.1` in the
//! policy is an explicit choice; a *name* that resolves to loopback is not). Cloud metadata
//! addresses are never opened by a literal: only `allowed_ips` naming them does.

use std::net::IpAddr;

use crate::policy::{CompiledPolicy, IpNetwork};

use super::ssrf::{AddressPolicy, BlockReason, NormalizedHost};

/// The address policy for `host:port` under `policy` (empty when no endpoint matches: every
/// private address is then refused).
pub fn for_target(policy: &CompiledPolicy, host: &NormalizedHost, port: u16) -> AddressPolicy {
    let host_text = host.to_string();
    let Some((_, endpoint)) = policy.matching_endpoints(&host_text, port).next() else {
        return AddressPolicy::default();
    };
    let mut allowed: Vec<IpNetwork> = endpoint.allowed_ips.clone();
    if let NormalizedHost::Ip(ip) = host {
        let metadata = AddressPolicy::default().check(*ip).is_err_and(|b| b.reason == BlockReason::CloudMetadata);
        if !metadata && endpoint.host.is_exact() && endpoint.host.to_string() == host_text {
            if let Some(net) = single(*ip) {
                allowed.push(net);
            }
        }
    }
    AddressPolicy::new(&allowed)
}

fn single(ip: IpAddr) -> Option<IpNetwork> {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{len}").parse().ok()
}
