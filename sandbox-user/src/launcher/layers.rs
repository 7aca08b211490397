//! Which layers a policy needs that this run cannot enforce. Fail closed: `leash run` refuses to
//! start the agent when the list is not empty, unless `--allow-degraded`, which reports each.

use std::fmt;

use crate::policy::CompiledPolicy;

/// A layer the policy asks for and this run lacks.
#[derive(Debug, Clone)]
pub struct Missing {
    pub layer: &'static str,
    pub why: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.layer, self.why)
    }
}

/// Parts of the policy that this build of leash cannot enforce on any kernel.
pub fn unenforceable(policy: &CompiledPolicy) -> Vec<Missing> {
    let mut missing = Vec::new();
    if policy.kernel().is_some() {
        missing.push(Missing {
            layer: "syscall policy (BPF-LSM)",
            why: "the policy has a `kernel:` section, which this build does not enforce yet".into(),
        });
    }
    missing
}
