//! Scaffolding shared by the network tests and the benchmark harness: network namespaces,
//! shell commands, background processes and temporary directories, each owned by a guard
//! whose `Drop` removes it, so a failure (a panic) still tears everything down. Names carry
//! the process id so parallel or leftover runs never collide.

pub mod docs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Namespaces and temporary directories that exist now, for [`clean_up_on_signals`].
static LIVE_NETNS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_add<T>(set: &Mutex<Vec<T>>, v: T) {
    set.lock().unwrap_or_else(|e| e.into_inner()).push(v);
}

fn live_remove<T: PartialEq>(set: &Mutex<Vec<T>>, v: &T) {
    set.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| x != v);
}

/// Makes SIGINT, SIGTERM and SIGHUP tear down what this process set up (every [`Netns`],
/// with whatever runs in it, and every [`TempDir`]) before it exits with 128 + the signal,
/// as a panic does through the guards' `Drop`. A harness killed by Ctrl-C, `timeout` or
/// a CI runner leaves nothing behind. Call it first thing in `main`, before any thread
/// starts: the signals are blocked in every thread and taken by one that waits for them.
/// SIGINT is also un-ignored (a shell starts background jobs with it ignored).
pub fn clean_up_on_signals() {
    const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    extern "C" fn unreachable_handler(_: libc::c_int) {}
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t; the handler installed
    // does nothing and is never run (the signals are blocked and taken by sigwait).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::signal(sig, unreachable_handler as *const () as libc::sighandler_t);
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid, initialised sigset_t; `sig` is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        eprintln!("signal {sig}: removing this run's namespaces and temporary files");
        let names = std::mem::take(&mut *LIVE_NETNS.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names {
            let _ = run(&format!("ip netns pids {name} | xargs -r kill -9"));
            std::thread::sleep(Duration::from_millis(50));
            let _ = run(&format!("ip netns del {name}"));
        }
        let dirs = std::mem::take(&mut *LIVE_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        std::process::exit(128 + sig);
    });
}

/// A number unique within this process.
pub fn seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Set by `scripts/test.sh`: a test that needs root and does not have it fails instead of
/// being skipped, so the suite CI runs can never pass by skipping.
pub const ROOT_TESTS_REQUIRED: &str = "OMNI_ROOT_TESTS_REQUIRED";

/// Whether a test that needs root (network namespaces, TAP devices, BPF, DPDK) may go on:
/// true as root. Otherwise it says on stderr which test is skipped and why, and returns
/// false, so `cargo test --workspace` passes for an ordinary user; with
/// [`ROOT_TESTS_REQUIRED`] set, not being root is a failure instead.
pub fn root_or_skip(needs: &str) -> bool {
    if is_root() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    if std::env::var(ROOT_TESTS_REQUIRED).is_ok_and(|v| v == "1") {
        panic!("{test} needs root ({needs}) and {ROOT_TESTS_REQUIRED}=1: run it as root");
    }
    // Straight to the stream, not through eprintln!: libtest would capture that and show
    // it only for a failing test, and a skip is worth seeing.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test} needs root ({needs}); scripts/test.sh runs it as root"
    );
    false
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn run(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs")
}

pub fn run_ok(cmd: &str) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("omt{}{}{tag}", std::process::id() % 100_000, seq());
        run_ok(&format!("ip netns add {name}"));
        live_add(&LIVE_NETNS, name.clone());
        run_ok(&format!("ip -n {name} link set lo up"));
        Self { name }
    }

    pub fn sh(&self, cmd: &str) -> Output {
        run(&format!("ip netns exec {} sh -c '{}'", self.name, cmd.replace('\'', "'\\''")))
    }

    pub fn sh_ok(&self, cmd: &str) -> String {
        let o = self.sh(cmd);
        assert!(
            o.status.success(),
            "[{}] `{cmd}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn kill_all(&self) {
        let _ = run(&format!("ip netns pids {} | xargs -r kill -9", self.name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        std::thread::sleep(Duration::from_millis(50));
        let _ = run(&format!("ip netns del {}", self.name));
        live_remove(&LIVE_NETNS, &self.name);
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("omni-test-{}-{}-{tag}", std::process::id(), seq()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        live_add(&LIVE_DIRS, p.clone());
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        live_remove(&LIVE_DIRS, &self.0);
    }
}

/// A background command in a namespace (a capture, a receiver, a tunnel), stopped and
/// reaped on `stop` or drop. `ip netns exec` execs the command, so the child is the
/// command itself.
pub struct Background(Option<Child>);

impl Background {
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn_logged(ns, args, None)
    }

    /// As `spawn`, with stdout and stderr appended to `log`.
    pub fn spawn_logged(ns: &Netns, args: &[&str], log: Option<&Path>) -> Self {
        let (out, err) = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("open log");
                (Stdio::from(f.try_clone().expect("dup log")), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn background command");
        Self(Some(child))
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(|c| c.id())
    }

    pub fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends `signal` (e.g. "INT" so tcpdump flushes its file) and waits up to 5 s.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut c) = self.0.take() {
            stop_child(&mut c, signal);
        }
    }
}

/// Sends `signal` to `child`, waits up to 5 s for it to exit, then kills it.
pub fn stop_child(child: &mut std::process::Child, signal: &str) {
    let _ = run(&format!("kill -{signal} {}", child.id()));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop("KILL");
    }
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
