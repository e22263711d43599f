//! The descriptor limit, shared by the tools: each viewer is a socket, and a swarm or a floor
//! holds thousands of them.

/// Raises this process's soft limit on open descriptors to its hard limit and returns the limit
/// now in force. Shells often start with a soft limit of 1024 under a far higher hard one; the
/// hard one only root with `CAP_SYS_RESOURCE` can raise, which `scripts/bench_fanout.sh` tries.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the calls to fill and to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}
