//! Counts of what was denied during one sandbox's life, for the summary `leash run` prints when
//! the agent ends: how many connections, requests and kernel actions were refused, and the
//! destinations and rules refused most often.

use std::collections::HashMap;
use std::fmt::Write as _;

/// How many entries of each top list the summary shows.
const TOP: usize = 3;

/// How many distinct destinations and rules are counted one by one: the agent chooses them (a
/// new name per query), and the counts live as long as the sandbox. Past that, new ones are
/// counted together under [`OTHERS`].
const MAX_DISTINCT: usize = 4096;
const OTHERS: &str = "(others)";

/// Adds one to `key`'s count in `counts`, or to [`OTHERS`]' when `counts` is full.
fn bump(counts: &mut HashMap<String, u64>, key: String) {
    let key = if counts.len() >= MAX_DISTINCT && !counts.contains_key(&key) { OTHERS.to_owned() } else { key };
    *counts.entry(key).or_default() += 1;
}

#[derive(Default)]
pub struct Tally {
    connections: u64,
    requests: u64,
    kernel: u64,
    outsiders: u64,
    /// Connections to the proxy reset before it read them (not denials: nothing was asked).
    resets: u64,
    names: u64,
    destinations: HashMap<String, u64>,
    rules: HashMap<String, u64>,
}

impl Tally {
    /// A proxy denial: a whole connection when `request` is false.
    pub fn proxy(&mut self, request: bool, destination: String, rule: String) {
        if request {
            self.requests += 1;
        } else {
            self.connections += 1;
        }
        bump(&mut self.destinations, destination);
        bump(&mut self.rules, rule);
    }

    /// A kernel denial by `hook`.
    pub fn kernel(&mut self, hook: &str) {
        self.kernel += 1;
        bump(&mut self.rules, format!("kernel {hook}"));
    }

    /// A name leash's resolver refused.
    pub fn name(&mut self, name: String) {
        self.names += 1;
        bump(&mut self.destinations, format!("dns {name}"));
    }

    /// A connection to the proxy from outside the sandbox.
    pub fn outsider(&mut self) {
        self.outsiders += 1;
    }

    /// A connection to the proxy that its client reset before the proxy read it.
    pub fn reset_before_read(&mut self) {
        self.resets += 1;
    }

    /// The summary's lines: what was denied (or that nothing was), then the connections reset
    /// before the proxy read them, if any.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.denials();
        if self.resets > 0 {
            lines.push(format!("{} connection(s) to the proxy reset before it read them", self.resets));
        }
        lines
    }

    fn denials(&self) -> Vec<String> {
        if self.connections + self.requests + self.kernel + self.outsiders + self.names == 0 {
            return vec!["nothing was denied".to_owned()];
        }
        let mut first = format!(
            "denied: {} connection(s) and {} request(s) at the proxy, {} kernel action(s)",
            self.connections, self.requests, self.kernel
        );
        if self.names > 0 {
            let _ = write!(first, ", {} name(s) at the resolver", self.names);
        }
        if self.outsiders > 0 {
            let _ = write!(first, ", {} connection(s) from outside the sandbox", self.outsiders);
        }
        let mut lines = vec![first];
        for (label, counts) in [("top denied destinations", &self.destinations), ("top rules", &self.rules)] {
            if !counts.is_empty() {
                lines.push(format!("{label}: {}", top(counts)));
            }
        }
        lines
    }
}

/// The most frequent entries, most frequent first (ties by name), as `name (count)`.
fn top(counts: &HashMap<String, u64>) -> String {
    let mut entries: Vec<(&String, &u64)> = counts.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    entries.iter().take(TOP).map(|(name, n)| format!("{name} ({n})")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ranks_denials() {
        let mut t = Tally::default();
        assert_eq!(t.lines(), ["nothing was denied"]);
        t.proxy(false, "evil.test:443".into(), "no_matching_policy".into());
        t.proxy(false, "evil.test:443".into(), "no_matching_policy".into());
        t.proxy(true, "api.github.com:443".into(), "deny_rules[0]".into());
        t.kernel("connect4");
        let lines = t.lines();
        assert_eq!(lines[0], "denied: 2 connection(s) and 1 request(s) at the proxy, 1 kernel action(s)");
        assert_eq!(lines[1], "top denied destinations: evil.test:443 (2), api.github.com:443 (1)");
        assert!(lines[2].starts_with("top rules: no_matching_policy (2)"), "{}", lines[2]);
    }

    #[test]
    fn resets_are_counted_apart_from_denials() {
        let mut t = Tally::default();
        t.reset_before_read();
        t.reset_before_read();
        assert_eq!(t.lines(), ["nothing was denied", "2 connection(s) to the proxy reset before it read them"]);
        t.outsider();
        assert_eq!(
            t.lines()[0],
            "denied: 0 connection(s) and 0 request(s) at the proxy, 0 kernel action(s), 1 connection(s) from outside the sandbox"
        );
    }

    /// Each name the resolver refuses is the agent's to choose: a query loop with a new name
    /// each time grew the counts for the sandbox's whole life.
    #[test]
    fn distinct_destinations_are_bounded() {
        let mut t = Tally::default();
        for i in 0..3 * MAX_DISTINCT {
            t.name(format!("n{i}.example"));
        }
        assert_eq!(t.destinations.len(), MAX_DISTINCT + 1);
        assert_eq!(t.destinations[OTHERS], 2 * MAX_DISTINCT as u64);
        assert_eq!(t.names, 3 * MAX_DISTINCT as u64);
    }
}
