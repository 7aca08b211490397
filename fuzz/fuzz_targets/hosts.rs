//! Host patterns and IP ranges from a policy, and the hosts an agent asks for. Checks: no
//! panic; a pattern that parses prints as a pattern that parses to itself; matching ignores
//! ASCII case and never accepts a trailing dot; an IP block contains its own address.
#![no_main]

use leash::policy::{HostPattern, IpNetwork};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is the pattern, the rest the hosts asked for.
    let mut lines = text.split('\n');
    let pattern_text = lines.next().unwrap_or("");
    if let Ok(network) = pattern_text.parse::<IpNetwork>() {
        let again: IpNetwork = network.to_string().parse().expect("a printed block parses");
        assert_eq!(again, network);
        let addr = network.to_string().split('/').next().unwrap_or("").parse().expect("an address");
        assert!(network.contains(addr));
    }
    let Ok(pattern) = pattern_text.parse::<HostPattern>() else {
        return;
    };
    let printed = pattern.to_string();
    assert_eq!(printed.parse::<HostPattern>().as_ref(), Ok(&pattern), "{printed}");
    if pattern.is_exact() {
        assert!(pattern.matches(&printed) && pattern.matches(&printed.to_ascii_uppercase()));
        assert!(!pattern.matches(&format!("{printed}.")));
    }
    for host in lines {
        let matched = pattern.matches(host);
        assert_eq!(pattern.matches(&host.to_ascii_uppercase()), matched, "{host}");
        assert_eq!(pattern.matches(&host.to_ascii_lowercase()), matched, "{host}");
        if matched {
            assert!(!host.ends_with('.') && !host.is_empty(), "{pattern} matched {host:?}");
            assert!(host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        }
        assert!(!pattern.matches(&format!("{host}.")));
    }
});
