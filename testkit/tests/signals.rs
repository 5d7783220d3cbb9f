//! A harness killed by a signal leaves no namespace, process or temporary directory behind
//! ([`omni_testkit::clean_up_on_signals`]). The test runs itself again as the "harness",
//! waits until it has set up a namespace (with a process in it) and a directory, sends it
//! SIGTERM, SIGINT or SIGHUP, and checks that everything is gone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use omni_testkit::{Background, Netns, TempDir, clean_up_on_signals, root_or_skip, run};

const CHILD: &str = "OMNI_SIGNALS_TEST_CHILD";

fn child() {
    clean_up_on_signals();
    let ns = Netns::new("sig");
    let dir = TempDir::new("sig");
    std::fs::write(dir.0.join("file"), b"x").unwrap();
    // A process in the namespace, as a tunnel or iperf3 would be.
    let _sleeper = Background::spawn(&ns, &["sleep", "60"]);
    println!("ready {} {}", ns.name, dir.0.display());
    std::thread::sleep(Duration::from_secs(60));
    panic!("not signalled within 60 s");
}

fn namespace_exists(name: &str) -> bool {
    String::from_utf8_lossy(&run("ip netns list").stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn signal_tears_everything_down(sig: &str, code: i32) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child starts");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mut words = line.split_whitespace().skip(1);
    let (ns, dir) = (words.next().unwrap().to_string(), words.next().unwrap().to_string());
    assert!(namespace_exists(&ns) && std::path::Path::new(&dir).exists(), "set up: {line}");
    let pids_in_ns =
        || String::from_utf8_lossy(&run(&format!("ip netns pids {ns}")).stdout).trim().to_string();
    assert!(!pids_in_ns().is_empty(), "a process runs in {ns}");
    run(&format!("kill -{sig} {}", c.id()));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "SIG{sig}: the child did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(code), "SIG{sig}: exit code 128 + signal");
    assert!(!namespace_exists(&ns), "SIG{sig}: namespace {ns} removed");
    assert!(!std::path::Path::new(&dir).exists(), "SIG{sig}: {dir} removed");
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    // Namespaces need root; CI runs the suite as root (scripts/test.sh).
    if !root_or_skip("it builds network namespaces") {
        return;
    }
    for (sig, code) in [("TERM", 143), ("INT", 130), ("HUP", 129)] {
        signal_tears_everything_down(sig, code);
        println!("signals: SIG{sig} tears everything down ... ok");
    }
}
