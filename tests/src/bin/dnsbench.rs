//! `dnsbench`: DNS answers per second and latency, for `cargo xtask bench dns`.
//!
//! ```text
//! dnsbench serve               a resolver on 127.0.0.1 (its address printed): every A question
//!                              for a `.test` name answered at once, from memory
//! dnsbench query ADDR NAME N   N sequential A queries for NAME over one UDP socket to ADDR
//! ```
//!
//! `query` prints `{"ops":N,"qps":..,"median_us":..,"p99_us":..}` after a few hundred untimed
//! queries; a query unanswered within 2 s, or answered without an address, ends the run (exit 1).
//! `serve` is the peer: the fastest a resolver on the host could be (no cache miss, no upstream),
//! answered like `leash_tests::dns`'s test resolver. Traffic stays on loopback: `query` sends only
//! to ADDR, which the benchmark keeps on loopback (or to port 53, which a transparent sandbox
//! redirects to leash's resolver).

use std::net::{SocketAddr, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

const WARMUP: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve"] => serve(),
        ["query", addr, name, n] => {
            let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
            let n: usize = n.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| usage());
            query(addr, name, n)
        }
        _ => usage(),
    }
}

fn serve() -> ! {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("binding: {e}")));
    println!("{}", socket.local_addr().unwrap_or_else(|e| fail(&e.to_string())));
    let mut buf = [0u8; 1500];
    loop {
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            if let Some((_, reply)) = leash_tests::dns::answer(&buf[..len]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    }
}

fn query(addr: SocketAddr, name: &str, n: usize) {
    let any: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(any).unwrap_or_else(|e| fail(&format!("binding: {e}")));
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap_or_else(|e| fail(&e.to_string()));
    let mut message = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        message.push(label.len() as u8);
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut buf = [0u8; 512];
    let mut one = |id: u16| {
        message[..2].copy_from_slice(&id.to_be_bytes());
        socket.send_to(&message, addr).unwrap_or_else(|e| fail(&format!("sending to {addr}: {e}")));
        loop {
            let (len, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| fail(&format!("no answer from {addr}: {e}")));
            if len >= 12 && buf[..2] == id.to_be_bytes() {
                if buf[3] & 0x0f != 0 || buf[7] == 0 {
                    fail(&format!("{name}: rcode {} with {} answers", buf[3] & 0x0f, buf[7]));
                }
                return;
            }
        }
    };
    for i in 0..WARMUP {
        one(i as u16);
    }
    let mut times = Vec::with_capacity(n);
    let began = Instant::now();
    for i in 0..n {
        let start = Instant::now();
        one((WARMUP + i) as u16);
        times.push(start.elapsed().as_nanos() as u64);
    }
    let seconds = began.elapsed().as_secs_f64();
    times.sort_unstable();
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    println!(
        "{{\"ops\":{n},\"qps\":{:.0},\"median_us\":{},\"p99_us\":{}}}",
        n as f64 / seconds,
        us(times[n / 2]),
        us(times[(n * 99 / 100).min(n - 1)])
    );
}

fn fail(why: &str) -> ! {
    eprintln!("dnsbench: {why}");
    exit(1)
}

fn usage() -> ! {
    eprintln!("usage: dnsbench serve | dnsbench query ADDR NAME N");
    exit(2)
}
