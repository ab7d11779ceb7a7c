//! CPU lists: the sysfs `cpulist` syntax, and the calling thread's affinity.
//!
//! sysfs writes CPU sets as ranges (`0-3,8,10-11`); the scheduler takes
//! `cpu_set_t` masks. Both are converted to sorted, de-duplicated `Vec<usize>`
//! here so the rest of the crate sees one representation.

use crate::NumaError;

/// The largest CPU number accepted from sysfs or the affinity mask. Linux's
/// `cpu_set_t` holds 1024; anything beyond is a malformed file.
pub const MAX_CPUS: usize = 1024;

/// Parses a sysfs CPU list (`0-3,8,10-11`, possibly empty or with a trailing
/// newline) into sorted unique CPU numbers.
pub fn parse_cpulist(text: &str) -> Result<Vec<usize>, NumaError> {
    let bad = |why: &str| NumaError::BadCpuList {
        text: text.trim().chars().take(80).collect(),
        why: why.to_string(),
    };
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let num = |s: &str| -> Result<usize, NumaError> {
            let n: usize = s.trim().parse().map_err(|_| bad("not a number"))?;
            if n >= MAX_CPUS {
                return Err(bad("CPU number too large"));
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(bad("descending range"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// CPUs the calling thread may run on (None where the OS does not say).
#[cfg(target_os = "linux")]
pub fn current_affinity() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..MAX_CPUS)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }
}

#[cfg(not(target_os = "linux"))]
pub fn current_affinity() -> Option<Vec<usize>> {
    None
}

/// Restricts the calling thread to `cpus`. Errors are reported, not fatal:
/// the pool still works unpinned (e.g. in containers that forbid it).
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), NumaError> {
    // SAFETY: as above; CPU_SET only writes inside the set for c < MAX_CPUS.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < MAX_CPUS) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(NumaError::Pin {
                cpus: cpus.to_vec(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpus: &[usize]) -> Result<(), NumaError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sysfs_syntax() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpulist("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpulist("\n").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpulist("5").unwrap(), vec![5]);
        assert_eq!(parse_cpulist("3,1,1-2").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["a", "1-", "-1", "3-1", "1--2", "99999", "0-99999", "1,x"] {
            assert!(parse_cpulist(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "[0-9,\\- \n]{0,40}") {
            let _ = parse_cpulist(&s);
        }

        #[test]
        fn round_trips(mut cpus in proptest::collection::vec(0usize..MAX_CPUS, 0..50)) {
            let text = cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
            cpus.sort_unstable();
            cpus.dedup();
            prop_assert_eq!(parse_cpulist(&text).unwrap(), cpus);
        }
    }

    #[test]
    fn affinity_is_readable_here() {
        if cfg!(target_os = "linux") {
            let cpus = current_affinity().expect("sched_getaffinity");
            assert!(!cpus.is_empty());
        }
    }
}
