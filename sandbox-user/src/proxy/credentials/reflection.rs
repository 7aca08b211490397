//! The credential coming back: a host a credential is bound to may hand request data back (a
//! header echo, a request target that becomes a file name listed later). Every response the
//! proxy intercepts passes through [`Reflections`], which replaces each real value it finds with
//! the credential's placeholder, so the agent never reads a value it was only meant to hold the
//! placeholder for.
//!
//! What is looked for, per credential value (longest first at each position):
//!
//! | spelling | why |
//! |---|---|
//! | the value as is | header echoes, JSON and text bodies |
//! | percent-encoded (upper- and lower-case hex), as the proxy writes it into a target | a reflected URL or file name |
//! | `/` escaped as `\/` | JSON encoders that escape slashes |
//! | base64 and base64url at each of the 3 alignments, the characters that depend only on the value (values of 6 bytes or more) | an echoed `Authorization: Basic` |
//!
//! Bodies are scanned as they stream: [`RedactedBody`] holds back the last `longest - 1` bytes of
//! what it has read, so a value split across chunks is still found; the length of the body may
//! change, so the caller drops `Content-Length`. Compressed bodies are not decoded here: the
//! proxy asks upstreams for `identity` and refuses a response that is encoded anyway
//! (`request.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderMap, HeaderValue};
use zeroize::Zeroizing;

use super::URL_VALUE;

/// Values shorter than this are not looked for in base64 (the part that depends only on the
/// value would be a few characters, found in unrelated text).
const BASE64_MIN_VALUE: usize = 6;

/// One spelling of one value and the placeholder that replaces it.
struct Spelling {
    found: Zeroizing<Vec<u8>>,
    placeholder: Bytes,
}

/// Every spelling of every credential value, ready to scan responses.
#[derive(Default)]
pub struct Reflections {
    /// Longest first, so the first match at a position is the longest.
    spellings: Vec<Spelling>,
    /// Whether some spelling starts with this byte.
    starts: Vec<bool>,
    /// The longest spelling's length.
    longest: usize,
}

impl std::fmt::Debug for Reflections {
    /// Counts only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflections").field("spellings", &self.spellings.len()).finish()
    }
}

impl Reflections {
    /// The spellings of `values`, each `(placeholder, value)`.
    pub fn new<'a>(values: impl IntoIterator<Item = (String, &'a str)>) -> Self {
        let mut spellings = Vec::new();
        for (placeholder, value) in values {
            let placeholder = Bytes::from(placeholder);
            for found in spellings_of(value.as_bytes()) {
                if !found.is_empty() && !spellings.iter().any(|s: &Spelling| *s.found == *found) {
                    spellings.push(Spelling { found, placeholder: placeholder.clone() });
                }
            }
        }
        spellings.sort_by_key(|s| std::cmp::Reverse(s.found.len()));
        let mut starts = vec![false; 256];
        for s in &spellings {
            starts[usize::from(s.found[0])] = true;
        }
        let longest = spellings.first().map_or(0, |s| s.found.len());
        Self { spellings, starts, longest }
    }

    /// Whether there is nothing to look for (no credentials).
    pub fn is_empty(&self) -> bool {
        self.spellings.is_empty()
    }

    /// `input` with every value replaced, or `None` when it holds none.
    pub fn redact(&self, input: &[u8]) -> Option<Vec<u8>> {
        let mut rest = input.to_vec();
        let out = self.redact_prefix(&mut rest, true);
        (out[..] != *input).then(|| out.to_vec())
    }

    /// Replaces values in every header value; a value that would not be a valid header value
    /// afterwards is removed.
    pub fn redact_headers(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        let mut invalid = Vec::new();
        for (name, value) in headers.iter_mut() {
            if let Some(new) = self.redact(value.as_bytes()) {
                match HeaderValue::from_bytes(&new) {
                    Ok(v) => *value = v,
                    Err(_) => invalid.push(name.clone()),
                }
            }
        }
        for name in invalid {
            headers.remove(name);
        }
    }

    /// Scans `pending` and returns what can be sent: everything when `last`, else all but the
    /// bytes a value could still be starting in. What is returned is removed from `pending`.
    fn redact_prefix(&self, pending: &mut Vec<u8>, last: bool) -> Bytes {
        let boundary = if last { pending.len() } else { pending.len().saturating_sub(self.longest.saturating_sub(1)) };
        let mut out = Vec::with_capacity(boundary);
        let mut pos = 0;
        let mut copied = 0;
        while pos < boundary {
            // A spelling starting before `boundary` lies wholly inside `pending`.
            match self.spelling_at(&pending[pos..]) {
                Some(s) => {
                    out.extend_from_slice(&pending[copied..pos]);
                    out.extend_from_slice(&s.placeholder);
                    pos += s.found.len();
                    copied = pos;
                }
                None => pos += 1,
            }
        }
        out.extend_from_slice(&pending[copied..pos]);
        pending.drain(..pos);
        Bytes::from(out)
    }

    /// The longest spelling `input` starts with.
    fn spelling_at(&self, input: &[u8]) -> Option<&Spelling> {
        let first = *input.first()?;
        if !self.starts[usize::from(first)] {
            return None;
        }
        self.spellings.iter().find(|s| input.starts_with(&s.found))
    }
}

/// The spellings of one value (see the module's table).
fn spellings_of(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = vec![Zeroizing::new(value.to_vec())];
    let upper: String = percent_encoding::percent_encode(value, URL_VALUE).collect();
    let upper = Zeroizing::new(upper);
    out.push(Zeroizing::new(upper.as_bytes().to_vec()));
    out.push(Zeroizing::new(lower_case_escapes(upper.as_bytes())));
    if value.contains(&b'/') {
        let escaped: Vec<u8> =
            value.iter().flat_map(|&b| if b == b'/' { vec![b'\\', b'/'] } else { vec![b] }).collect();
        out.push(Zeroizing::new(escaped));
    }
    if value.len() >= BASE64_MIN_VALUE {
        for align in 0..3 {
            let mut shifted = Zeroizing::new(vec![0u8; align]);
            shifted.extend_from_slice(value);
            // Characters before `skip` also carry bits of the bytes in front of the value, the
            // last one may carry bits of the bytes after it.
            let skip = (8 * align).div_ceil(6);
            let keep = (8 * shifted.len()) / 6;
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let encoded = Zeroizing::new(engine.encode(&*shifted));
                out.push(Zeroizing::new(encoded.as_bytes()[skip..keep].to_vec()));
            }
        }
    }
    out
}

/// `%2f` for `%2F`: the same escapes with lower-case hex digits.
fn lower_case_escapes(encoded: &[u8]) -> Vec<u8> {
    let mut out = encoded.to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'%' {
            let end = (i + 3).min(out.len());
            out[i + 1..end].make_ascii_lowercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// A response body with every credential value replaced, streamed: it holds back only the bytes
/// a value split across chunks could still be starting in.
pub struct RedactedBody<B> {
    inner: B,
    reflections: std::sync::Arc<Reflections>,
    pending: Vec<u8>,
    /// Trailers read while data was still held back; sent after it.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> RedactedBody<B> {
    pub fn new(inner: B, reflections: std::sync::Arc<Reflections>) -> Self {
        Self { inner, reflections, pending: Vec::new(), trailers: None, done: false }
    }
}

impl<B> Body for RedactedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.reflections.redact_prefix(&mut this.pending, true);
                    if rest.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    this.pending.extend_from_slice(&data);
                    let ready = this.reflections.redact_prefix(&mut this.pending, false);
                    if !ready.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(ready))));
                    }
                }
                Err(frame) => {
                    // Trailers end the body: flush what is held back, then send them.
                    if let Ok(mut trailers) = frame.into_trailers() {
                        this.reflections.redact_headers(&mut trailers);
                        this.trailers = Some(trailers);
                    }
                    this.done = true;
                    let rest = this.reflections.redact_prefix(&mut this.pending, true);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    const VALUE: &str = "npm/tok+en=SECRET42";
    const PH: &str = "leash:resolve:env:NPM";

    fn reflections() -> Reflections {
        Reflections::new([(PH.to_owned(), VALUE), ("leash:resolve:env:SHORT".to_owned(), "abc")])
    }

    #[test]
    fn every_spelling_is_replaced() {
        let r = reflections();
        let url: String = percent_encoding::percent_encode(VALUE.as_bytes(), URL_VALUE).collect();
        let cases = [
            format!("token={VALUE};"),
            format!("/files/{url}/x"),
            format!("/files/{}/x", url.replace("%2F", "%2f").replace("%2B", "%2b").replace("%3D", "%3d")),
            format!("{{\"t\":\"{}\"}}", VALUE.replace('/', "\\/")),
        ];
        for case in &cases {
            let out = String::from_utf8(r.redact(case.as_bytes()).expect("found")).expect("utf8");
            assert!(out.contains(PH) && !out.contains("SECRET42"), "{case} -> {out}");
        }
        assert_eq!(r.redact(b"x abc y").as_deref(), Some(&b"x leash:resolve:env:SHORT y"[..]));
        assert_eq!(r.redact(b"nothing here"), None);
    }

    #[test]
    fn basic_auth_echo_is_replaced_at_every_alignment() {
        let r = reflections();
        for user in ["", "u", "us", "usr", "x-access-token"] {
            for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
                let echo = engine.encode(format!("{user}:{VALUE}"));
                let out = r.redact(echo.as_bytes()).expect("found");
                let decoded = engine.decode(&out).unwrap_or_default();
                assert!(!String::from_utf8_lossy(&decoded).contains("SECRET42"), "{user:?}: {echo}");
                assert!(!String::from_utf8_lossy(&out).contains(&echo));
            }
        }
    }

    #[tokio::test]
    async fn a_value_split_at_any_chunk_boundary_is_replaced() {
        let r = std::sync::Arc::new(reflections());
        let text = format!("head {VALUE} middle {VALUE}{VALUE} tail abc");
        let want = String::from_utf8(r.redact(text.as_bytes()).expect("found")).expect("utf8");
        assert!(!want.contains("SECRET42"));
        for size in 1..=text.len() {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                text.as_bytes().chunks(size).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
            let inner = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            let body = RedactedBody::new(inner, r.clone());
            let got = body.collect().await.expect("body").to_bytes();
            assert_eq!(String::from_utf8_lossy(&got), want, "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn trailers_are_redacted_and_sent_after_the_data() {
        let r = std::sync::Arc::new(reflections());
        let mut trailers = HeaderMap::new();
        trailers.insert("x-echo", HeaderValue::from_static("npm/tok+en=SECRET42"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"npm/tok+en=SEC"))), Ok(Frame::trailers(trailers))];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let collected = RedactedBody::new(inner, r).collect().await.expect("body");
        let t = collected.trailers().cloned().expect("trailers");
        assert_eq!(t["x-echo"], PH);
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"npm/tok+en=SEC"));
    }
}

/// Generated values and responses (issue 16); the `reflection` fuzz target checks the same on
/// arbitrary input.
#[cfg(test)]
mod properties {
    use std::collections::VecDeque;
    use std::task::Waker;

    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    /// A placeholder no spelling contains, so any spelling left in the output is a leak.
    const MARK: &str = "\u{1}";

    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn streamed(reflections: &std::sync::Arc<Reflections>, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut chunks = VecDeque::new();
        let mut rest = body;
        for &cut in cuts {
            let at = cut.min(rest.len());
            chunks.push_back(Bytes::copy_from_slice(&rest[..at]));
            rest = &rest[at..];
        }
        chunks.push_back(Bytes::copy_from_slice(rest));
        let mut body = RedactedBody::new(Chunks(chunks), reflections.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_promised_spelling_is_removed_across_any_chunking(
            value in "[ -~]{1,12}",
            before in "[ -~]{0,6}",
            after in "[ -~]{0,6}",
            user in "[a-z]{0,3}",
            cuts in proptest::collection::vec(0usize..12, 0..8),
        ) {
            let reflections = std::sync::Arc::new(Reflections::new([(MARK.to_owned(), value.as_str())]));
            let upper: String = percent_encoding::utf8_percent_encode(&value, URL_VALUE).collect();
            let lower = lower_case_escapes(upper.as_bytes());
            let basic = STANDARD.encode(format!("{user}:{value}"));
            let body = format!("{before}{value}|{upper}|{}|Basic {basic}{after}", String::from_utf8_lossy(&lower));
            let whole = reflections.redact(body.as_bytes()).unwrap_or_else(|| body.clone().into_bytes());
            let mut gone = vec![value.clone().into_bytes(), upper.clone().into_bytes(), lower];
            if value.len() >= BASE64_MIN_VALUE {
                // The characters of the token that depend only on the value.
                let lead = user.len() + 1;
                let first = (8 * lead).div_ceil(6);
                let last = 8 * (lead + value.len()) / 6;
                gone.push(basic.as_bytes()[first..last].to_vec());
            }
            for spelling in &gone {
                prop_assert!(!contains(&whole, spelling), "{:?} left in {:?}", String::from_utf8_lossy(spelling), String::from_utf8_lossy(&whole));
            }
            prop_assert_eq!(streamed(&reflections, body.as_bytes(), &cuts), whole);
        }
    }
}
