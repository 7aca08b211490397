//! Fields of `/proc/<pid>/stat` (proc(5)). The command name, field 2, is parenthesised and may
//! itself hold spaces and parentheses: fields are counted from the last `)`.

/// Field `n` of a stat line, numbered as proc(5) numbers them (3 is the state); `None` for the
/// first two or past the end.
pub fn field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_ascii_whitespace().nth(n.checked_sub(3)?)
}

/// Field `n` of process `pid`'s stat, parsed.
pub fn read<T: std::str::FromStr>(pid: u32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    field(&stat, n)?.parse().ok()
}

/// The start time of process `pid`, in clock ticks after boot (field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    read(pid, 22)
}

/// The flags of a stat line (field 9).
pub fn flags(stat: &str) -> Option<u64> {
    field(stat, 9)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_whatever_it_holds() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0";
        assert_eq!(field(stat, 3), Some("S"));
        assert_eq!(field(stat, 4), Some("1"));
        assert_eq!(flags(stat), Some(4194560));
        assert_eq!((field(stat, 2), field(stat, 40)), (None, None));
        assert_eq!(flags("garbage"), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_a_parent() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(read::<u32>(me, 4), Some(std::os::unix::process::parent_id()));
    }
}
