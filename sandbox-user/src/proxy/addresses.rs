//! Which private addresses a connection may reach: the endpoint's `allowed_ips` — of the
//! endpoint the decision chose, never of another one covering the same host — plus the address
//! itself when the endpoint names an IP literal (writing `host: 127.0.0.1` in the policy is an
//! explicit choice; a *name* that resolves to loopback is not). Cloud metadata addresses are
//! never opened by a literal: only `allowed_ips` naming them does.

use std::net::IpAddr;

use crate::policy::{CompiledEndpoint, IpNetwork};

use super::ssrf::{normalize_host, AddressPolicy, BlockReason, NormalizedHost};

/// The address policy of `endpoint`.
pub fn for_endpoint(endpoint: &CompiledEndpoint) -> AddressPolicy {
    let mut allowed: Vec<IpNetwork> = endpoint.allowed_ips.clone();
    if endpoint.host.is_exact() {
        if let Ok(NormalizedHost::Ip(ip)) = normalize_host(&endpoint.host.to_string()) {
            let metadata = AddressPolicy::default().check(ip).is_err_and(|b| b.reason == BlockReason::CloudMetadata);
            if let (false, Some(net)) = (metadata, single(ip)) {
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
