//! The policy document parser (`leash policy check`, and the node daemon reading policies a
//! cluster admin or a pod annotation names). Checks: no panic on any text; every error names
//! the file and a line and column inside the text.
#![no_main]

use leash::policy::parse_str;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = parse_str("fuzz.yaml", text) {
        let message = error.to_string();
        assert!(message.starts_with("fuzz.yaml"), "{message}");
    }
});
