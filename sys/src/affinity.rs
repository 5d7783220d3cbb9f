//! Where the calling thread runs: its CPUs (affinity) and its share of them (nice).

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: u32) -> std::io::Result<()> {
    set_current_thread(&[cpu])
}

/// Lets the calling thread run on `cpus` only.
pub fn set_current_thread(cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond what the kernel's CPU sets hold"),
            ));
        }
        // SAFETY: cpu < CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Sets the calling thread's nice value (-20: most CPU when contended, 19: least). A
/// negative one needs CAP_SYS_NICE. Threads it starts later inherit it.
pub fn set_current_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain system call; on Linux, PRIO_PROCESS with who = 0 is the calling thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The CPUs the calling thread may run on (empty if the kernel does not say).
pub fn allowed_cpus() -> Vec<u32> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most the set's size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as u32)
        // SAFETY: every index is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) })
        .collect()
}

/// A CPU list the way the kernel writes one: "0-3,6".
pub fn format_cpus(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    if out.is_empty() { "none".into() } else { out.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_to_an_allowed_cpu_and_refuses_nonsense() {
        std::thread::spawn(|| {
            pin_current_thread(0).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, 0);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(1 << 20).is_err());
    }

    #[test]
    fn allowed_cpus_round_trip() {
        std::thread::spawn(|| {
            let all = allowed_cpus();
            assert!(all.contains(&0));
            pin_current_thread(0).unwrap();
            assert_eq!(allowed_cpus(), vec![0]);
            set_current_thread(&all).unwrap();
            assert_eq!(allowed_cpus(), all);
        })
        .join()
        .unwrap();
        assert_eq!(format_cpus(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_cpus(&[5]), "5");
        assert_eq!(format_cpus(&[]), "none");
    }
}
