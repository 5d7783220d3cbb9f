use std::path::Path;
use std::time::Duration;

use omni_proto::aead::CipherChoice;

use super::*;

const KEY_A: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

fn parse(s: &str) -> Result<FileConfig, ConfigError> {
    FileConfig::parse(s, Path::new("test.toml"))
}

#[test]
fn nucleus_specs() {
    let k = omni_proto::Identity::from_seed([5; 32]).public_key();
    let s = nucleus_spec(&format!("{k}@127.0.0.1:51820"), &System).unwrap();
    assert_eq!(s.pinned, Some(k));
    assert_eq!(s.addr, "127.0.0.1:51820".parse().unwrap());
    // Without a port (as the original README wrote it): the fabric's port.
    for (text, addr) in [
        ("127.0.0.1", "127.0.0.1:51820"),
        ("::1", "[::1]:51820"),
        ("[::1]", "[::1]:51820"),
        ("[::1]:7", "[::1]:7"),
    ] {
        let s = nucleus_spec(text, &System).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.addr, addr.parse().unwrap(), "{text}");
    }
    assert!(nucleus_spec(&format!("{k}@127.0.0.1"), &System).unwrap().pinned.is_some());
    assert!(nucleus_spec("bad@127.0.0.1:1", &System).is_err());
    assert!(nucleus_spec("127.0.0.1:notaport", &System).is_err());
}

#[test]
fn full_file_parses() {
    let f = parse(&format!(
        r#"
        [daemon]
        port = 51999
        interface = "eth1"
        tap = "fab0"
        offload = false
        crypto_thread = true
        cpu_latency = "always"
        [network]
        nucleus = "127.0.0.1:51820"
        cluster = "fleet"
        cluster_secret = "s3cret"
        [security]
        max_sessions_per_ip = 5
        handshake_timeout_secs = 2
        [[peers]]
        public_key = "{KEY_A}"
        endpoint = "10.0.0.2:51820"
        [metrics]
        listen = "127.0.0.1:9200"
        "#
    ))
    .unwrap();
    let s = Settings::resolve(f, CliOverrides::default()).unwrap();
    assert_eq!(s.daemon.port, 51999);
    assert_eq!(s.daemon.tap, "fab0");
    assert_eq!(s.daemon.interface.as_deref(), Some("eth1"));
    assert_eq!(s.network.nucleus[0].addr, "127.0.0.1:51820".parse().unwrap());
    assert_eq!(s.security.max_sessions_per_ip, 5);
    assert_eq!(s.security.timers.rekey_timeout, Duration::from_secs(2));
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].endpoint, Some("10.0.0.2:51820".parse().unwrap()));
    assert_eq!(s.metrics_listen, Some("127.0.0.1:9200".parse().unwrap()));
    assert!(!s.daemon.offload);
    assert!(s.daemon.crypto_thread);
    assert_eq!(s.daemon.cpu_latency, omni_shm::settings::CpuLatency::Always);
}

#[test]
fn defaults() {
    let s = Settings::resolve(FileConfig::default(), CliOverrides::default()).unwrap();
    assert_eq!(s.daemon.port, 51820);
    assert_eq!(s.daemon.tap, "omni0");
    assert_eq!(s.security.max_sessions_per_ip, 10);
    assert_eq!(s.security.timers.rekey_timeout, Duration::from_secs(5));
    assert_eq!(s.security.timers.rekey_after, Duration::from_secs(120));
    assert_eq!(s.switch.fdb_aging, Duration::from_secs(300));
    assert_eq!(s.daemon.run_dir, PathBuf::from("/run/omni"));
    assert_eq!(s.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(s.daemon.cipher, CipherChoice::Auto);
}

#[test]
fn unknown_keys_are_named() {
    let e = parse("[daemon]\nprot = 1\n").unwrap_err().to_string();
    assert!(e.contains("prot"), "{e}");
    let e = parse("[bogus]\n").unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
    let e = parse(&format!("[[peers]]\npublic_key = \"{KEY_A}\"\nendpont = \"x\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("endpont"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let e = parse("[daemon]\nport = \"abc\"\n").unwrap_err().to_string();
    assert!(e.contains("port"), "{e}");
    let e = parse("[daemon]\nport = 70000\n").unwrap_err().to_string();
    assert!(e.contains("port"), "{e}");
    let cases = [
        ("[security]\nmax_sessions_per_ip = 0\n", "max_sessions_per_ip"),
        ("[security]\nhandshake_timeout_secs = -1\n", "handshake_timeout_secs"),
        ("[[peers]]\npublic_key = \"nope\"\n", "public_key"),
        (&format!("[[peers]]\npublic_key = \"{KEY_A}\"\nendpoint = \"10.0.0.2\"\n"), "endpoint"),
        ("[metrics]\nlisten = \"here\"\n", "listen"),
        ("[daemon]\ntap = \"this-name-is-too-long\"\n", "tap"),
        ("[daemon]\nmtu = 100\n", "mtu"),
        ("[daemon]\ncipher = \"aes-128-cbc\"\n", "cipher"),
        ("[daemon]\ncpu_latency = \"sometimes\"\n", "cpu_latency"),
        ("[daemon]\ndataplane_cpu = 100000\n", "dataplane_cpu"),
        ("[daemon]\nspin_us = 10001\n", "spin_us"),
        ("[qos]\nreal_time_dscp = [\"EF\", \"AF14\"]\n", "[qos] real_time_dscp"),
        ("[qos]\nbackground_pcp = \"9\"\n", "[qos] background_pcp"),
        ("[qos]\nbackground_dscp = [\"EF\"]\n", "DSCP EF is in both"),
        ("[qos]\nreal_time_share = 95\n", "[qos] real_time_share"),
        ("[qos]\nbackground_dscp = []\n", "background PCPs are set but no background DSCP"),
        (
            "[daemon]\nbackend = \"dpdk\"\ndataplane_cpu = 0\n[dpdk]\nunderlay = \"net_af_packet0,iface=u\"\nunderlay_ip = \"10.0.0.1/24\"\n",
            "[dpdk] cores",
        ),
        ("[timers]\nrekey_after_secs = 10\nreject_after_secs = 5\n", "reject_after_secs"),
        ("[switch]\nfdb_capacity = 1000\n", "fdb_capacity"),
        ("[network]\ncluster_secret = \"s\"\n", "cluster"),
        ("[network]\ncluster = \"a b\"\ncluster_secret = \"s\"\n", "cluster"),
        ("[network]\ncluster = \"ab\"\n", "cluster_secret"),
        ("[network]\nnucleus = \"127.0.0.1:1\"\n", "nucleus"),
        (
            "[network]\nnucleus = \"nokey@127.0.0.1:1\"\ncluster = \"c\"\ncluster_secret = \"s\"\n",
            "nucleus",
        ),
    ];
    for (text, key) in cases {
        let e = Settings::resolve(parse(text).unwrap(), CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
}

#[test]
fn dataplane_cpu_is_checked_against_the_allowed_cpus() {
    let cpu = omni_sys::affinity::allowed_cpus()[0];
    let s = Settings::resolve(
        parse(&format!("[daemon]\ndataplane_cpu = {cpu}\n")).unwrap(),
        CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(s.daemon.dataplane_cpu, Some(cpu));
    assert_eq!(crate::daemon::dataplane_args(&s, 1400, &[2, 0, 0, 0, 0, 1]).cpu, Some(cpu));
    let e = Settings::resolve(
        parse("[daemon]\ndataplane_cpu = 4000\n").unwrap(),
        CliOverrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("dataplane_cpu") && e.contains("allowed:"), "{e}");
}

#[test]
fn the_class_map_is_configured_and_passed_to_the_data_plane() {
    use omni_proto::qos::{ClassSets, DscpSet};
    let s = Settings::resolve(FileConfig::default(), CliOverrides::default()).unwrap();
    assert_eq!(s.qos.classes, ClassSets::default());
    assert_eq!(s.qos.real_time_share, 33);
    let f = parse(
        "[qos]\nreal_time_dscp = [\"EF\", 34, \"cs6\"]\nbackground_dscp = []\nbackground_pcp = \"none\"\nreal_time_pcp = \"4,5\"\nreal_time_share = 50\n",
    )
    .unwrap();
    let s = Settings::resolve(f, CliOverrides::default()).unwrap();
    assert_eq!(s.qos.classes.real_time_dscp, "AF41,EF,CS6".parse::<DscpSet>().unwrap());
    assert_eq!(s.qos.classes.background_dscp, DscpSet(0));
    assert_eq!(s.qos.classes.real_time_pcp.to_string(), "4,5");
    assert_eq!(s.qos.classes.background_pcp.to_string(), "none");
    let args = crate::daemon::dataplane_args(&s, 1400, &[2, 0, 0, 0, 0, 1]);
    assert_eq!(args.class_sets(), s.qos.classes);
    assert_eq!(args.qos_real_time_share, 50);
    let argv = args.to_argv().join(" ");
    assert!(argv.contains("--qos-real-time-dscp AF41,EF,CS6 --qos-background-dscp none"), "{argv}");
    // The command line wins.
    let f = parse("[qos]\nreal_time_dscp = \"EF\"\n").unwrap();
    let cli = CliOverrides {
        qos_real_time_dscp: Some("cs5".into()),
        qos_real_time_share: Some(10),
        ..Default::default()
    };
    let s = Settings::resolve(f, cli).unwrap();
    assert_eq!(s.qos.classes.real_time_dscp.to_string(), "CS5");
    assert_eq!(s.qos.real_time_share, 10);
}

#[test]
fn command_line_overrides_file() {
    let f = parse(&format!("[daemon]\nport = 1000\ntap = \"a0\"\ncrypto_thread = true\ncipher = \"aes-256-gcm\"\n[[peers]]\npublic_key = \"{KEY_A}\"\nendpoint = \"10.0.0.2:1\"\n")).unwrap();
    let cli = CliOverrides {
        port: Some(2000),
        peers: vec![(KEY_A.into(), Some("10.0.0.3:2".into()))],
        metrics_listen: Some("off".into()),
        crypto_thread: Some(false),
        cipher: Some("chacha20-poly1305".into()),
        cpu_latency: Some("off".into()),
        spin_us: Some(0),
        ..Default::default()
    };
    let s = Settings::resolve(f, cli).unwrap();
    assert!(!s.daemon.crypto_thread);
    assert_eq!(s.daemon.spin_us, 0);
    assert_eq!(s.daemon.cpu_latency, omni_shm::settings::CpuLatency::Off);
    assert_eq!(s.daemon.cipher, CipherChoice::Only(omni_proto::aead::Aead::ChaCha20Poly1305));
    assert_eq!(s.daemon.port, 2000);
    assert_eq!(s.daemon.tap, "a0");
    assert_eq!(s.peers.len(), 1, "same key merged");
    assert_eq!(s.peers[0].endpoint, Some("10.0.0.3:2".parse().unwrap()));
    assert_eq!(s.metrics_listen, None);
}

#[test]
fn cluster_secret_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("omni-cfg-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // A secret file: read (trimmed) at 0600, refused with the fix at 0644.
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    chmod(&secret, 0o600);
    let text =
        format!("[network]\ncluster = \"fleet\"\ncluster_secret_file = \"{}\"\n", secret.display());
    let s = Settings::resolve(parse(&text).unwrap(), CliOverrides::default()).unwrap();
    assert_eq!(s.network.cluster_secret.as_deref(), Some("s3cret"));
    chmod(&secret, 0o644);
    let e =
        Settings::resolve(parse(&text).unwrap(), CliOverrides::default()).unwrap_err().to_string();
    assert!(e.contains("readable by other users") && e.contains("chmod 600"), "{e}");
    // Not both.
    let cli = CliOverrides { cluster_secret: Some("x".into()), ..Default::default() };
    let e = Settings::resolve(parse(&text).unwrap(), cli).unwrap_err().to_string();
    assert!(e.contains("not both"), "{e}");
    // A config file holding the secret itself: refused when others can read it.
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, "[network]\ncluster = \"fleet\"\ncluster_secret = \"s\"\n").unwrap();
    chmod(&cfg, 0o644);
    let e = FileConfig::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    chmod(&cfg, 0o600);
    assert!(FileConfig::load(&cfg).is_ok());
    // Without a secret in it, a readable config file is fine.
    std::fs::write(&cfg, "[daemon]\nport = 1\n").unwrap();
    chmod(&cfg, 0o644);
    assert!(FileConfig::load(&cfg).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A machine made up for the test: names, secret files and CPUs are what it says.
/// A machine with names, a secret file and (certificate) files of its own.
#[derive(Default)]
struct FakeHost {
    files: Vec<(String, String)>,
}

impl Host for FakeHost {
    fn resolve(&self, key: &str, text: &str, port: Option<u16>) -> Result<SocketAddr, ConfigError> {
        match host::with_port(key, text, port)? {
            host::HostPort::Addr(a) => Ok(a),
            host::HostPort::Name(n) if n.starts_with("nucleus.example:") => {
                Ok(SocketAddr::new("192.0.2.7".parse().unwrap(), n[16..].parse().unwrap()))
            }
            host::HostPort::Name(n) => Err(invalid(key, format!("no such name {n}"))),
        }
    }
    fn read_secret(&self, path: &std::path::Path, _: &'static str) -> Result<String, String> {
        if path == Path::new("/fake/secret") {
            Ok("s3cret".into())
        } else {
            Err("unreadable".into())
        }
    }
    fn read_file(&self, path: &std::path::Path) -> Result<String, String> {
        self.files
            .iter()
            .find(|(p, _)| Path::new(p) == path)
            .map(|(_, text)| text.clone())
            .ok_or_else(|| format!("cannot read {}: no such file", path.display()))
    }
    fn allowed_cpus(&self) -> Vec<u32> {
        vec![0, 1, 2, 3, 4, 5, 6, 7]
    }
    fn cpus(&self) -> usize {
        8
    }
}

#[test]
fn validation_asks_the_machine_only_through_its_host() {
    let f = parse(
        "[daemon]\ndataplane_cpu = 6\n[network]\nnucleus = \"nucleus.example\"\ncluster = \"fleet\"\n\
         cluster_secret_file = \"/fake/secret\"\n",
    )
    .unwrap();
    let s = Settings::resolve_on(f, CliOverrides::default(), &FakeHost::default()).unwrap();
    assert_eq!(s.network.nucleus[0].addr, "192.0.2.7:51820".parse().unwrap());
    assert_eq!(s.network.cluster_secret.as_deref(), Some("s3cret"));
    assert_eq!(s.daemon.dataplane_cpu, Some(6));
    assert!(s.daemon.crypto_thread, "8 CPUs: the crypto thread is on by default");
    let f = parse("[daemon]\ndataplane_cpu = 9\n").unwrap();
    let e = Settings::resolve_on(f, CliOverrides::default(), &FakeHost::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("allowed: 0-7"), "{e}");
}

#[test]
fn uplinks_are_checked_and_passed_to_the_data_plane() {
    let s = Settings::resolve(FileConfig::default(), CliOverrides::default()).unwrap();
    assert!(s.network.uplinks.is_empty());
    assert_eq!(s.network.uplink_probe_ms, 40);
    let f = parse("[network]\nuplinks = [\"wlan0\", \"wwan0\"]\nuplink_probe_ms = 25\n").unwrap();
    let s = Settings::resolve(f, CliOverrides::default()).unwrap();
    assert_eq!(s.network.uplinks, ["wlan0", "wwan0"]);
    let argv = crate::daemon::dataplane_args(&s, 1400, &[2, 0, 0, 0, 0, 1]).to_argv().join(" ");
    assert!(argv.contains("--uplink wlan0 --uplink wwan0 --uplink-probe-ms 25"), "{argv}");
    // The command line's list replaces the file's.
    let f = parse("[network]\nuplinks = [\"wlan0\", \"wwan0\"]\n").unwrap();
    let cli = CliOverrides { uplinks: vec!["eth1".into()], ..Default::default() };
    assert_eq!(Settings::resolve(f, cli).unwrap().network.uplinks, ["eth1"]);
    let cases = [
        ("[network]\nuplinks = [\"a\", \"a\"]\n", "a is listed twice"),
        ("[network]\nuplinks = [\"a/b\"]\n", "not an interface name"),
        ("[network]\nuplinks = [\"this-name-is-too-long\"]\n", "not an interface name"),
        (
            "[network]\nuplinks = [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]\n",
            "at most 8",
        ),
        ("[network]\nuplink_probe_ms = 5\n", "[network] uplink_probe_ms"),
        (
            "[daemon]\nbackend = \"xdp\"\ninterface = \"eth0\"\n[network]\nuplinks = [\"a\", \"b\"]\n",
            "socket backend only",
        ),
    ];
    for (text, key) in cases {
        let e = Settings::resolve(parse(text).unwrap(), CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
}
