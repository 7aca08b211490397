//! DNS queries the agent sends leash's resolver (transparent mode). Checks: no panic; a query
//! that is read gets an answer that echoes its id and question, never exceeds what one UDP
//! datagram without EDNS carries, and is itself never taken for a query (no reflection loop).
#![no_main]

use leash::proxy::dns::wire::{parse_query, Malformed, Rcode, UDP_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_query(data) {
        Ok(query) => {
            let answer = query.answer(Rcode::NoError, Some([198, 18, 0, 1]), 300);
            assert_eq!(&answer[..2], &data[..2], "the id is echoed");
            assert!(answer.len() <= UDP_LIMIT, "{} bytes", answer.len());
            assert_eq!(parse_query(&answer), Err(Malformed::Drop), "an answer is never answered");
            if let Some(name) = &query.name {
                assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'));
            }
        }
        Err(Malformed::Answer { id, .. }) => assert_eq!(id.to_be_bytes(), [data[0], data[1]]),
        Err(Malformed::Drop) => {}
    }
});
