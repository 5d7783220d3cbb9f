//! Command-line and configuration errors: each is a clear message naming the problem and
//! the fix, with a failing exit status, never a panic.

mod common;

use common::*;
use std::process::Command;

fn daemon(args: &[&str]) -> (bool, String) {
    let o =
        Command::new(bin("omni-daemon")).args(args).env("HOME", "/nonexistent").output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!text.contains("panicked"), "no panic: {text}");
    (o.status.success(), text)
}

#[test]
fn init_pubkey_and_refusing_to_overwrite() {
    let d = TempDir::new("cli-init");
    let key = d.0.join("id.key");
    let (ok, out) = daemon(&["--init", "--identity", key.to_str().unwrap()]);
    assert!(ok, "{out}");
    let printed = out.trim().strip_prefix("Your Public Identity: ").unwrap().to_string();
    assert_eq!(printed.len(), 44);
    let (ok, out) = daemon(&["pubkey", "--identity", key.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(out.trim(), printed);
    let (ok, out) = daemon(&["--init", "--identity", key.to_str().unwrap()]);
    assert!(!ok && out.contains("--force"), "{out}");
    let (ok, out) = daemon(&["--init", "--force", "--identity", key.to_str().unwrap()]);
    assert!(ok && !out.contains(&printed), "{out}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let d = TempDir::new("cli-bad");
    let key = d.0.join("id.key");
    daemon(&["--init", "--identity", key.to_str().unwrap()]);
    let k = key.to_str().unwrap();
    let cfg = d.0.join("bad.toml");
    std::fs::write(&cfg, "[daemon]\nport = 51820\nprot = 1\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--identity", "/nonexistent/id.key"], "omni-daemon --init --identity"),
        (vec!["--identity", k, "--peer", "not-a-key"], "--peer"),
        (vec!["--identity", k, "--endpoint", "10.0.0.1:1"], "before any --peer"),
        (
            vec![
                "--identity",
                k,
                "--peer",
                "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
                "--endpoint",
                "10.0.0.1",
            ],
            "has no port",
        ),
        (vec!["--config", cfg.to_str().unwrap(), "--identity", k], "prot"),
        (vec!["--config", "/nonexistent.toml"], "cannot read config file"),
        (vec!["--identity", k, "--tap", "way-too-long-interface-name"], "tap"),
        (vec!["--identity", k, "--metrics-listen", "nowhere"], "listen"),
        (vec!["--identity", k, "--port", "99999"], "port"),
        (vec!["status", "--run-dir", "/nonexistent/run"], "is it running"),
    ];
    for (args, needle) in cases {
        let (ok, out) = daemon(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(out.contains(needle), "{args:?}: expected {needle:?} in: {out}");
    }
    // A key file other users can read is refused.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (ok, out) = daemon(&["--identity", k]);
    assert!(!ok && out.contains("chmod 600"), "{out}");
}

#[test]
fn dataplane_reports_port_in_use_and_bad_arguments() {
    let _serial = serial();
    let d = TempDir::new("cli-dp");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let o = Command::new(bin("omni-dataplane"))
        .args([
            "--run-dir",
            d.0.to_str().unwrap(),
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--tap",
            "omnitestx0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("already in use") && err.contains("--port"), "{err}");
    let o = Command::new(bin("omni-dataplane"))
        .args(["--tap-mac", "01:00:00:00:00:01"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("multicast"));
}

#[test]
fn dataplane_without_privileges_says_what_it_needs() {
    let _serial = serial();
    if !omni_testkit::root_or_skip("it drops to an unprivileged user") {
        return;
    }
    assert!(
        run("command -v setpriv").status.success(),
        "setpriv (util-linux) is missing; run scripts/setup.sh"
    );
    let d = TempDir::new("cli-noroot");
    run_ok(&format!("chmod 0777 {}", d.0.display()));
    let o = run(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all {} --run-dir {} --bind 127.0.0.1 --port 0 --tap omninoroot0",
        bin("omni-dataplane").display(),
        d.0.display()
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
}

#[test]
fn home_config_is_read_without_config_flag() {
    let d = TempDir::new("cli-home");
    std::fs::create_dir_all(d.0.join(".omni")).unwrap();
    std::fs::write(d.0.join(".omni/config.toml"), "[security]\nmax_sessions_per_ip = 0\n").unwrap();
    let o = Command::new(bin("omni-daemon"))
        .args(["--identity", "/nonexistent/x.key"])
        .env("HOME", &d.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("max_sessions_per_ip"), "~/.omni/config.toml was read: {err}");
}

#[test]
fn scripts_pass_shellcheck_and_deploy_has_a_dry_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(
        run("command -v shellcheck").status.success(),
        "shellcheck is missing; run scripts/setup.sh"
    );
    let o = run(&format!(
        "cd {} && shellcheck -x --source-path=SCRIPTDIR scripts/*.sh bench/compare .ci/run",
        root.display()
    ));
    assert!(o.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&o.stdout));
    let o = run(&format!(
        "{}/scripts/deploy_nucleus.sh admin@203.0.113.5 /nonexistent/key --port 443 --dry-run --binary /bin/true",
        root.display()
    ));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    for needle in [
        "+ scp",
        "admin@203.0.113.5:/tmp/omni-nucleus",
        "systemctl enable --now omni-nucleus",
        "--listen 0.0.0.0:443",
        "CAP_NET_BIND_SERVICE",
        "--nucleus <NUCLEUS-KEY>@203.0.113.5:443",
    ] {
        assert!(out.contains(needle), "dry run mentions {needle:?}:\n{out}");
    }
    let o = run(&format!("{}/scripts/deploy_nucleus.sh --dry-run", root.display()));
    assert!(!o.status.success(), "a missing target is an error");
    let o =
        run(&format!("{}/scripts/deploy_nucleus.sh user@h --port 70000 --dry-run", root.display()));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--port"));
}

#[test]
fn systemd_units_verify_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    if !run("command -v systemd-analyze").status.success() {
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_omni-daemon")).parent().unwrap();
    let dir = omni_testkit::TempDir::new("units");
    for unit in ["omni-daemon.service", "omni-nucleus.service"] {
        let text = std::fs::read_to_string(root.join("packaging/systemd").join(unit)).unwrap();
        // deploy_nucleus.sh hands the unit to a remote shell in single quotes.
        assert!(!text.contains('\''), "{unit} has no single quote");
        // The binaries as built here, so verify can check ExecStart.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        let path = dir.0.join(unit);
        std::fs::write(&path, text).unwrap();
        let o = run(&format!("systemd-analyze verify {}", path.display()));
        let err = String::from_utf8_lossy(&o.stderr);
        // Unknown keys are only warnings: any output at all fails the test.
        assert!(o.status.success() && err.trim().is_empty(), "{unit}: {err}");
    }
}

#[test]
fn dpdk_backend_errors_name_the_problem() {
    let _serial = serial();
    let d = TempDir::new("cli-dpdk");
    let run_dir = d.0.display().to_string();
    let dp = |args: &[&str]| {
        let o = Command::new(bin("omni-dataplane"))
            .args(["--backend", "dpdk", "--run-dir", &run_dir])
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Missing or malformed arguments: said before DPDK starts.
    let e = dp(&["--access", "net_tap0", "--underlay-ip", "10.0.0.1/24"]);
    assert!(e.contains("--underlay") && e.contains("0000:3b:00.0"), "{e}");
    let e = dp(&["--underlay", "eth0", "--access", "net_tap0", "--underlay-ip", "10.0.0.1/24"]);
    assert!(e.contains("neither a PCI address") && e.contains("net_memif0"), "{e}");
    let e =
        dp(&["--underlay", "net_null0", "--access", "net_tap0", "--underlay-ip", "10.0.0.1/33"]);
    assert!(e.contains("--underlay-ip") && e.contains("prefix"), "{e}");
    let e =
        dp(&["--underlay", "net_null0", "--access", "net_null0", "--underlay-ip", "10.0.0.1/24"]);
    assert!(e.contains("different ports"), "{e}");
    let e = dp(&["--iface", "eth0", "--underlay", "net_null0"]);
    assert!(e.contains("--iface is for --backend xdp"), "{e}");
    let e = dp(&["--workers", "9", "--underlay", "net_null0"]);
    assert!(e.contains("--workers") && e.contains("1..=8"), "{e}");
    if omni_testkit::root_or_skip("EAL needs it to look a port up") {
        // A port DPDK has no driver for: EAL or the port lookup says which.
        let e = dp(&[
            "--underlay",
            "net_bogus0",
            "--access",
            "net_null1",
            "--underlay-ip",
            "10.0.0.1/24",
        ]);
        assert!(e.contains("net_bogus0") || e.contains("cannot start DPDK"), "{e}");
        // Workers without a core each, or with crypto cores beside them: said before EAL.
        let ports =
            ["--underlay", "net_null0", "--access", "net_null1", "--underlay-ip", "10.0.0.1/24"];
        let e = dp(&[&ports[..], &["--workers", "2", "--cores", "0"]].concat());
        assert!(e.contains("needs as many cores"), "{e}");
        let e = dp(&[&ports[..], &["--workers", "2", "--cores", "0-2"]].concat());
        assert!(e.contains("crypto workers go with a single"), "{e}");
        // Without root: said first.
        let e = run(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all {} --backend dpdk --run-dir {run_dir} --underlay net_null0 --access net_null1 --underlay-ip 10.0.0.1/24",
            bin("omni-dataplane").display()
        ));
        let err = String::from_utf8_lossy(&e.stderr);
        assert!(!e.status.success() && err.contains("needs root"), "{err}");
    }
    // The daemon checks its [dpdk] section: `section` refused, naming `key`.
    let cfg = d.0.join("dpdk.toml");
    let refused = |section: &str, key: &str| {
        std::fs::write(&cfg, format!("[daemon]\nbackend = \"dpdk\"\n[dpdk]\n{section}")).unwrap();
        let o = Command::new(bin("omni-daemon"))
            .args(["--config", cfg.to_str().unwrap(), "--identity", "/nonexistent/x.key"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(key), "{section}: {err}");
    };
    refused("underlay = \"net_null0\"\n", "[dpdk] underlay_ip");
    refused(
        "underlay = \"net_null0\"\nunderlay_ip = \"10.0.0.1/24\"\nworkers = 0\n",
        "[dpdk] workers",
    );
}

#[test]
fn errors_print_each_cause_once() {
    let (ok, out) = daemon(&["--config", "/nonexistent/missing.toml"]);
    assert!(!ok);
    let os = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(out.matches(&os).count(), 1, "{out}");
    assert!(out.contains("cannot read config file /nonexistent/missing.toml"), "{out}");
}

#[test]
fn check_validates_without_starting_and_names_the_wrong_key() {
    let d = TempDir::new("cli-check");
    let key = d.0.join("id.key");
    let k = key.to_str().unwrap();
    daemon(&["--init", "--identity", k]);
    let good = d.0.join("good.toml");
    // The original README's file, with the secret it needs and a real peer key; `--iface`
    // and a Nucleus without a port as it wrote them.
    std::fs::write(
        &good,
        "[daemon]\nport = 51820\ninterface = \"lo\"\n[network]\nnucleus = \"127.0.0.1\"\n\
         cluster = \"ai-robot-fleet\"\ncluster_secret = \"s3cret\"\n[security]\n\
         max_sessions_per_ip = 10\nhandshake_timeout_secs = 5\n[[peers]]\n\
         public_key = \"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"\nendpoint = \"192.168.1.100:51820\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let run_dir = d.0.join("run");
    let g = good.to_str().unwrap();
    let rd = run_dir.to_str().unwrap();
    let (ok, out) = daemon(&["--config", g, "--identity", k, "--run-dir", rd, "--check"]);
    assert!(ok, "{out}");
    assert!(out.contains("configuration is valid") && out.contains("127.0.0.1:51820"), "{out}");
    assert!(out.contains("1 static"), "{out}");
    assert!(!run_dir.exists(), "--check started nothing (no run directory)");
    let (ok, out) = daemon(&["--config", g, "--identity", k, "--iface", "nope0", "--check"]);
    assert!(!ok && out.contains("[daemon] interface \"nope0\" does not exist"), "{out}");
    let bad = d.0.join("bad.toml");
    std::fs::write(&bad, "[switch]\nfdb_capacity = 1000\n").unwrap();
    let (ok, out) = daemon(&["--config", bad.to_str().unwrap(), "--identity", k, "--check"]);
    assert!(!ok && out.contains("[switch] fdb_capacity"), "{out}");
}
