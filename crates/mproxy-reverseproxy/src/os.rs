//! What the proxy asks of the process as a whole: enough file descriptors
//! for every client slot, and memory handed back once clients leave

/// Raise the soft limit on open files to `needed` (up to the hard limit)
///
/// Every client is one descriptor, and `--max-clients` applies per
/// listener; the usual soft limit of 1024 would make `accept` fail long
/// before 1,000 clients. Returns the limit now in force (`None` if it
/// cannot be read); the caller warns when it is below `needed`.
pub(crate) fn raise_nofile(needed: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur >= needed {
        return Some(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit that only the soft limit changes in,
    // within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        Some(raised.rlim_cur)
    } else {
        Some(lim.rlim_cur)
    }
}

/// The largest receive buffer a socket of this process gets as asked:
/// unlimited with CAP_NET_ADMIN in the initial user namespace
/// (SO_RCVBUFFORCE), else `net.core.rmem_max`; `None` if unknown
pub(crate) fn rcvbuf_ceiling() -> Option<usize> {
    if can_force_buffers() {
        return Some(usize::MAX);
    }
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CAP_NET_ADMIN, and in the initial user namespace (the kernel checks
/// SO_RCVBUFFORCE against that one)
fn can_force_buffers() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let init_ns = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let fields: Vec<&str> = m.split_whitespace().collect();
        fields == ["0", "0", "4294967295"]
    });
    effective & (1 << CAP_NET_ADMIN) != 0 && init_ns
}

/// Give freed heap memory back to the OS
///
/// The allocator keeps what the clients' payloads and TLS sessions used in
/// its arenas; after a stalled client's backlog is let go of, that can be
/// megabytes that would otherwise stay resident. glibc only (elsewhere
/// this does nothing).
pub(crate) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions; it only returns free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_raise_nofile_never_lowers() {
        let now = raise_nofile(0).unwrap();
        assert!(now > 0);
        assert_eq!(raise_nofile(16), Some(now));
        release_memory();
        assert!(rcvbuf_ceiling().is_some_and(|c| c > 0));
    }
}
