//! DNS messages, as far as leash's resolver needs them: read one query (RFC 1035 §4.1), write
//! its answer. Pure functions over bytes, so the agent's input reaches nothing else; every
//! malformed query gets `None` (dropped) or a FORMERR answer, never a panic.

/// Record types the resolver answers with data.
pub const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;
/// Answers without EDNS fit in this (RFC 1035 §4.2.1); leash's never exceed it.
pub const UDP_LIMIT: usize = 512;

/// Response codes used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// One question, read from a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    /// Recursion desired, echoed in the answer.
    pub rd: bool,
    /// The name, lower-case, labels joined by dots, no trailing dot; `None` when a label holds
    /// anything but letters, digits, `-` and `_` (no host of a policy can match it).
    pub name: Option<String>,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as received (echoed in the answer).
    question: &'a [u8],
}

/// Why a message gets no answer with data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Too short for a header, or a response: dropped, nothing is sent back.
    Drop,
    /// A header, but not one question leash can read: answered with this code.
    Answer { id: u16, rcode: Rcode },
}

/// Reads the single question of a standard query.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, Malformed> {
    if msg.len() < HEADER_LEN {
        return Err(Malformed::Drop);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(Malformed::Drop); // a response: never answered (no reflection loops)
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(Malformed::Answer { id, rcode: Rcode::NotImp });
    }
    let formerr = Malformed::Answer { id, rcode: Rcode::FormErr };
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return Err(formerr);
    }
    let mut pos = HEADER_LEN;
    let mut name = String::new();
    let mut valid = true;
    loop {
        let len = *msg.get(pos).ok_or(formerr)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        // Compression pointers (and the reserved 01/10 forms) have no place in a question.
        if len > 63 || pos - HEADER_LEN + len > MAX_NAME {
            return Err(formerr);
        }
        let label = msg.get(pos..pos + len).ok_or(formerr)?;
        pos += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(b.to_ascii_lowercase() as char);
            } else {
                valid = false;
            }
        }
    }
    let fixed = msg.get(pos..pos + 4).ok_or(formerr)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let question = &msg[HEADER_LEN..pos + 4];
    let name = (valid && !name.is_empty()).then_some(name);
    Ok(Query { id, rd: flags & 0x0100 != 0, name, qtype, qclass, question })
}

impl Query<'_> {
    /// Whether this is a class IN question.
    pub fn is_internet(&self) -> bool {
        self.qclass == CLASS_IN
    }

    /// The answer: `rcode`, and an A record for the question's name when `address` is given.
    pub fn answer(&self, rcode: Rcode, address: Option<[u8; 4]>, ttl: u32) -> Vec<u8> {
        let mut out = header(self.id, self.rd, rcode, 1, u16::from(address.is_some()));
        out.extend_from_slice(self.question);
        if let Some(ip) = address {
            // The name by pointer to the question's (offset 12), type A, class IN.
            out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        out
    }
}

/// An answer with no question section (to a query that could not be read).
pub fn bare_answer(id: u16, rcode: Rcode) -> Vec<u8> {
    header(id, false, rcode, 0, 0)
}

/// A response header: authoritative, recursion available.
fn header(id: u16, rd: bool, rcode: Rcode, questions: u16, answers: u16) -> Vec<u8> {
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | rcode as u16;
    if rd {
        flags |= 0x0100;
    }
    let mut out = Vec::with_capacity(UDP_LIMIT);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of type `qtype`, as a stub resolver writes it.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![(id >> 8) as u8, id as u8, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn a_query_is_read_and_answered() {
        let msg = query(0x1234, "API.Example.com", TYPE_A);
        let q = parse_query(&msg).unwrap();
        assert_eq!((q.id, q.rd, q.qtype, q.name.as_deref()), (0x1234, true, TYPE_A, Some("api.example.com")));
        let answer = q.answer(Rcode::NoError, Some([198, 18, 0, 1]), 60);
        assert_eq!(&answer[..2], &[0x12, 0x34]);
        assert_eq!(answer[3] & 0x0f, 0);
        assert_eq!(&answer[6..8], &[0, 1], "one answer");
        assert_eq!(&answer[answer.len() - 4..], &[198, 18, 0, 1]);
        assert_eq!(&answer[12..msg.len()], &msg[12..], "the question is echoed");
    }

    #[test]
    fn malformed_queries_are_dropped_or_get_formerr() {
        assert_eq!(parse_query(&[0; 5]), Err(Malformed::Drop));
        let mut response = query(7, "a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(Malformed::Drop));
        let truncated = &query(7, "a.b", TYPE_A)[..15];
        assert_eq!(parse_query(truncated), Err(Malformed::Answer { id: 7, rcode: Rcode::FormErr }));
        let mut pointer = query(7, "a.b", TYPE_A);
        pointer[12] = 0xc0;
        assert_eq!(parse_query(&pointer), Err(Malformed::Answer { id: 7, rcode: Rcode::FormErr }));
        let mut two = query(7, "a.b", TYPE_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(Malformed::Answer { id: 7, rcode: Rcode::FormErr }));
        let mut update = query(7, "a.b", TYPE_A);
        update[2] |= 5 << 3;
        assert_eq!(parse_query(&update), Err(Malformed::Answer { id: 7, rcode: Rcode::NotImp }));
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{label}.x");
        assert_eq!(parse_query(&query(7, &long, TYPE_A)), Err(Malformed::Answer { id: 7, rcode: Rcode::FormErr }));
    }

    #[test]
    fn a_label_with_other_bytes_names_nothing() {
        let q = query(1, "a b.example.com", TYPE_A);
        assert_eq!(parse_query(&q).unwrap().name, None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn any_bytes_give_a_query_or_a_refusal(msg in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok(q) = parse_query(&msg) {
                    let answer = q.answer(Rcode::NoError, Some([198, 18, 0, 1]), 1);
                    prop_assert!(answer.len() <= msg.len() + 16);
                }
            }
        }
    }
}
