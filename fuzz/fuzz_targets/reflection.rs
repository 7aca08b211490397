//! Response scrubbing: a response body streamed through `RedactedBody` in chunks the fuzzer
//! chooses. Checks: no panic; the output holds no value as is, percent-encoded (either hex
//! case) or as the value-only part of a base64 `user:value` token at any alignment, even when
//! a value straddles chunks; chunking never changes the output.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use leash::proxy::credentials::{RedactedBody, Reflections};
use libfuzzer_sys::fuzz_target;

/// Placeholders made of a byte no spelling holds, so any spelling left in the output is a leak
/// (the real placeholder text could complete a value the agent already knows).
const MARK: &str = "\u{1}";

/// A body that yields the given chunks.
struct Chunks(std::collections::VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn stream(reflections: &std::sync::Arc<Reflections>, chunks: Vec<Bytes>) -> Vec<u8> {
    let mut body = RedactedBody::new(Chunks(chunks.into()), reflections.clone());
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
        if let Ok(data) = frame.expect("infallible").into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// What must not survive: the value, its percent-encodings, and the base64 characters that
/// depend only on the value when it follows 0, 1 or 2 other bytes (values of 6 bytes or more).
fn forbidden(value: &str) -> Vec<Vec<u8>> {
    let mut out = vec![value.as_bytes().to_vec()];
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let upper: String = percent_encoding::utf8_percent_encode(value, SET).collect();
    out.push(upper.clone().into_bytes());
    let mut lower = upper.into_bytes();
    for i in 0..lower.len() {
        if i >= 1 && lower[i - 1] == b'%' || i >= 2 && lower[i - 2] == b'%' {
            lower[i] = lower[i].to_ascii_lowercase();
        }
    }
    out.push(lower);
    if value.len() >= 6 {
        for lead in 0..3usize {
            let mut bytes = vec![b'u'; lead];
            bytes.extend_from_slice(value.as_bytes());
            let first = (8 * lead).div_ceil(6);
            let last = 8 * bytes.len() / 6;
            for engine in [&STANDARD, &URL_SAFE] {
                out.push(engine.encode(&bytes).as_bytes()[first..last].to_vec());
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // `value1\nvalue2\n<cut bytes>\n<body>`: up to two values, chunk lengths, then the body.
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let values: Vec<String> = (0..2)
        .filter_map(|_| parts.next())
        .filter_map(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
        .map(str::to_owned)
        .collect();
    let cuts = parts.next().unwrap_or_default();
    let Some(body) = parts.next() else {
        return;
    };
    let reflections = std::sync::Arc::new(Reflections::new(values.iter().map(|v| (MARK.to_owned(), v.as_str()))));
    let whole = reflections.redact(body).unwrap_or_else(|| body.to_vec());
    for value in &values {
        for spelling in forbidden(value) {
            assert!(!contains(&whole, &spelling), "{value:?}: {:?} left", String::from_utf8_lossy(&spelling));
        }
    }
    let mut chunks = Vec::new();
    let mut rest = body;
    for &cut in cuts {
        let at = usize::from(cut).min(rest.len());
        chunks.push(Bytes::copy_from_slice(&rest[..at]));
        rest = &rest[at..];
    }
    chunks.push(Bytes::copy_from_slice(rest));
    assert_eq!(stream(&reflections, chunks), whole, "chunking changed the output");
});
