//! Fleet membership at the edge: the authority key file, the policy source (TOML),
//! durations and times, and statements read from files with errors that name the file.
//! What the statements mean is `omni_proto::membership`'s.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use omni_proto::Identity;
use omni_proto::membership::cert::SignedCertificate;
use omni_proto::membership::policy::{Policy, Rule, SignedPolicy, parse_ethertype};
use omni_proto::membership::revocation::{SignedRevocation, Target};
use omni_proto::membership::{Kind, MembershipError, check_name};
use omni_proto::store;
use serde::Deserialize;

/// The comment line of an authority file that names its cluster.
const AUTHORITY_TAG: &str = "# omni-authority cluster=";

/// A cluster's authority: the key that signs its certificates, revocations and policies.
#[derive(Debug)]
pub struct Authority {
    pub identity: Identity,
    pub cluster: String,
}

/// Creates an authority for `cluster` at `path` (mode 0600; an existing file is kept
/// unless `force`).
pub fn create_authority(path: &Path, cluster: &str, force: bool) -> anyhow::Result<Authority> {
    omni_proto::cluster::validate_name(cluster)?;
    let identity = Identity::generate();
    let text = format!(
        "{AUTHORITY_TAG}{cluster}\n# keep this file offline: whoever holds it admits nodes\n{}",
        identity.to_file_text().as_str()
    );
    store::write_private(path, text.as_bytes(), force)?;
    Ok(Authority { identity, cluster: cluster.to_string() })
}

/// Loads the authority at `path`, refusing a file other users can read or write.
pub fn load_authority(path: &Path) -> anyhow::Result<Authority> {
    let identity = store::load(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cluster =
        text.lines().find_map(|l| l.strip_prefix(AUTHORITY_TAG)).map(str::trim).with_context(
            || {
                format!(
                    "{} is not an authority file (no '{AUTHORITY_TAG}NAME' line); make one with \
                 omni-daemon cluster init NAME --authority {}",
                    path.display(),
                    path.display()
                )
            },
        )?;
    omni_proto::cluster::validate_name(cluster)
        .with_context(|| format!("the cluster named in {}", path.display()))?;
    Ok(Authority { identity, cluster: cluster.to_string() })
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A duration such as `90d`, `12h`, `30m`, `45s`, `2w` (a bare number is seconds).
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("duration {s:?}: the unit must be s, m, h, d or w (e.g. 90d)"),
    };
    let n: u64 = num.parse().with_context(|| format!("duration {s:?}: expected e.g. 90d"))?;
    match n.checked_mul(scale) {
        Some(0) | None => bail!("duration {s:?} must be more than zero and less than centuries"),
        Some(v) => Ok(v),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min, s) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{s:02} UTC")
}

/// Reads a statement of `kind` from a file; errors name the file.
pub fn read_statement<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, MembershipError>,
) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is refused", path.display()))
}

/// The policy source file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Newer policies win; default: the time of signing.
    version: Option<u64>,
    #[serde(default)]
    allow: Vec<AllowRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowRule {
    between: Vec<String>,
    #[serde(default)]
    ethertypes: Vec<String>,
    #[serde(default)]
    vlans: Vec<u16>,
}

/// Builds the policy of `cluster` from its TOML source (`[[allow]] between = [A, B]`, with
/// optional `ethertypes` and `vlans`; a top-level `version`, else `now`).
pub fn policy_from_toml(text: &str, cluster: &str, now: u64) -> anyhow::Result<Policy> {
    let f: PolicyFile = toml::from_str(text)?;
    let mut rules = Vec::with_capacity(f.allow.len());
    for (i, r) in f.allow.into_iter().enumerate() {
        let n = i + 1;
        let [a, b]: [String; 2] = r.between.try_into().map_err(|v: Vec<String>| {
            anyhow::anyhow!(
                "[[allow]] number {n}: between names {} groups; name two (a group with itself \
                 lets its members talk among themselves)",
                v.len()
            )
        })?;
        let ethertypes = r
            .ethertypes
            .iter()
            .map(|t| parse_ethertype(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("[[allow]] number {n}: ethertypes: {e}"))?;
        rules.push(Rule { between: [a, b], ethertypes, vlans: r.vlans });
    }
    let policy = Policy {
        cluster: cluster.to_string(),
        version: f.version.unwrap_or(now),
        issued: now,
        rules,
    };
    policy.validate()?;
    Ok(policy)
}

/// A human description of any statement file's text (`cluster show`), checked as far as a
/// statement checks itself (its signature by the key it names).
pub fn describe(text: &str, now: u64) -> anyhow::Result<String> {
    let armour = |k: Kind| text.contains(&format!("-----BEGIN OMNI {}-----", k.label()));
    let window = |nb: u64, na: u64| {
        let state = if now < nb {
            "not yet valid".to_string()
        } else if now >= na {
            "EXPIRED".to_string()
        } else {
            format!("expires in {} days", (na - now) / 86_400)
        };
        format!("{} .. {} ({state})", format_time(nb), format_time(na))
    };
    if armour(Kind::Certificate) {
        let s = SignedCertificate::from_text(text)?;
        let c = &s.cert;
        return Ok(format!(
            "certificate (signature valid)\n  node       {}\n  name       {}\n  cluster    {}\n  groups     {}\n  serial     {:#018x}\n  valid      {}\n  authority  {}\n",
            c.node,
            c.name,
            c.cluster,
            if c.groups.is_empty() { "(none)".to_string() } else { c.groups.join(", ") },
            c.serial,
            window(c.not_before, c.not_after),
            s.authority
        ));
    }
    if armour(Kind::Revocation) {
        let s = SignedRevocation::from_text(text)?;
        let r = &s.revocation;
        let target = match r.target {
            Target::Key(k) => format!("node key {k}"),
            Target::Serial(n) => format!("certificate serial {n:#018x}"),
        };
        let until = if r.until == 0 { "never".to_string() } else { format_time(r.until) };
        return Ok(format!(
            "revocation (signature valid)\n  revokes    {target}\n  cluster    {}\n  issued     {}\n  forgotten  {until}\n  authority  {}\n",
            r.cluster,
            format_time(r.issued),
            s.authority
        ));
    }
    if armour(Kind::Policy) {
        let s = SignedPolicy::from_text(text)?;
        let p = &s.policy;
        let mut out = format!(
            "policy (signature valid)\n  cluster    {}\n  version    {}\n  issued     {}\n  authority  {}\n  rules      {}\n",
            p.cluster,
            p.version,
            format_time(p.issued),
            s.authority,
            p.rules.len()
        );
        for r in &p.rules {
            let et = if r.ethertypes.is_empty() {
                "any EtherType".to_string()
            } else {
                r.ethertypes.iter().map(|t| format!("{t:#06x}")).collect::<Vec<_>>().join(", ")
            };
            let vl = if r.vlans.is_empty() {
                "any VLAN".to_string()
            } else {
                format!(
                    "VLAN {}",
                    r.vlans.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
                )
            };
            out.push_str(&format!("    {} <-> {}: {et}; {vl}\n", r.between[0], r.between[1]));
        }
        return Ok(out);
    }
    bail!("no OMNI CERTIFICATE, REVOCATION or POLICY armour in it")
}

/// Revocations kept across restarts: one file per revoked key or serial under
/// `STATE_DIR/revocations/`, written when one is received, read at start (lapsed ones are
/// deleted then). Bounded by [`MAX_REVOCATIONS`].
pub struct RevocationStore {
    dir: std::path::PathBuf,
}

/// Revocations a node keeps at most (beyond, new ones are refused with an error that says
/// so: a fleet that revokes this many keys should rotate its authority).
pub const MAX_REVOCATIONS: usize = 10_000;

impl RevocationStore {
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("revocations") }
    }

    fn file_name(target: &Target) -> String {
        match target {
            Target::Key(k) => {
                format!(
                    "key-{}.rev",
                    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            }
            Target::Serial(s) => format!("serial-{s:016x}.rev"),
        }
    }

    /// Keeps `r`, unless a revocation of the same target that lasts at least as long is
    /// kept already (a later one with a shorter life must not shorten it).
    pub fn save(&self, r: &SignedRevocation) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.dir.join(Self::file_name(&r.revocation.target));
        let lasts = |until: u64| if until == 0 { u64::MAX } else { until };
        if let Ok(kept) = read_statement(&path, SignedRevocation::from_text)
            && lasts(kept.revocation.until) >= lasts(r.revocation.until)
        {
            return Ok(());
        }
        if !path.exists() && self.count() >= MAX_REVOCATIONS {
            bail!(
                "{} already holds {MAX_REVOCATIONS} revocations; forget lapsed ones \
                 (cluster revoke --forget-after) or rotate the authority",
                self.dir.display()
            );
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, r.to_text())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    fn count(&self) -> usize {
        let rev = |e: &std::fs::DirEntry| e.path().extension().is_some_and(|x| x == "rev");
        std::fs::read_dir(&self.dir).map(|d| d.flatten().filter(rev).count()).unwrap_or(0)
    }

    /// The revocations kept for `authority` and `cluster` that have not lapsed at `now`;
    /// lapsed ones are deleted, unreadable or foreign ones logged and skipped.
    pub fn load(
        &self,
        authority: &omni_proto::PublicKey,
        cluster: &str,
        now: u64,
    ) -> Vec<SignedRevocation> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return vec![] };
        let mut out = vec![];
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "rev") {
                continue;
            }
            let r = match read_statement(&path, SignedRevocation::from_text) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("skipping a kept revocation: {e:#}");
                    continue;
                }
            };
            if let Err(e) = r.applies(authority, cluster) {
                tracing::warn!(file = %path.display(), "skipping a kept revocation: {e}");
                continue;
            }
            if r.revocation.lapsed(now) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            out.push(r);
        }
        out
    }
}

/// The group policy in force, kept across restarts in `STATE_DIR/policy.signed` (the
/// newest version received).
pub struct PolicyStore {
    path: std::path::PathBuf,
}

impl PolicyStore {
    pub fn new(state_dir: &Path) -> Self {
        Self { path: state_dir.join("policy.signed") }
    }

    pub fn save(&self, p: &SignedPolicy) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.path.parent().expect("a file in the state directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, p.to_text())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The kept policy, if there is one for `authority` and `cluster` (anything else is
    /// logged and ignored).
    pub fn load(&self, authority: &omni_proto::PublicKey, cluster: &str) -> Option<SignedPolicy> {
        if !self.path.exists() {
            return None;
        }
        let p = read_statement(&self.path, SignedPolicy::from_text)
            .and_then(|p| p.applies(authority, cluster).map(|()| p).map_err(Into::into));
        match p {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), "ignoring the kept policy: {e:#}");
                None
            }
        }
    }
}

/// Checks a list of group names given on the command line (`robots,arm`).
pub fn parse_groups(s: &str) -> anyhow::Result<Vec<String>> {
    let groups: Vec<String> =
        s.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect();
    for g in &groups {
        check_name(g, omni_proto::membership::cert::MAX_GROUP)
            .map_err(|e| anyhow::anyhow!("group {e}"))?;
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("omni-membership-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_authority_file_is_private_names_its_cluster_and_loads_back() {
        let d = dir("authority");
        let p = d.join("fleet.authority");
        let a = create_authority(&p, "ai-robot-fleet", false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let b = load_authority(&p).unwrap();
        assert_eq!(
            (b.cluster.as_str(), b.identity.public_key()),
            ("ai-robot-fleet", a.identity.public_key())
        );
        assert!(create_authority(&p, "ai-robot-fleet", false).is_err(), "never replaced silently");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load_authority(&p).unwrap_err().to_string().contains("chmod 600"));
        // A node identity is not an authority.
        let id = d.join("node.key");
        store::init(&id, false).unwrap();
        assert!(load_authority(&id).unwrap_err().to_string().contains("not an authority file"));
        assert!(create_authority(&d.join("x"), "bad name", false).is_err());
    }

    #[test]
    fn revocations_are_kept_bounded_by_target_and_forgotten_when_lapsed() {
        use omni_proto::membership::revocation::Revocation;
        let d = dir("store");
        let store = RevocationStore::new(&d);
        let a = Identity::from_seed([5; 32]);
        let sign = |target, until| {
            let r = Revocation { cluster: "fleet".into(), target, issued: 1, until };
            SignedRevocation::parse(&r.sign(&a).unwrap()).unwrap()
        };
        let key = Identity::from_seed([6; 32]).public_key();
        store.save(&sign(Target::Key(key), 0)).unwrap();
        store.save(&sign(Target::Key(key), 0)).unwrap();
        store.save(&sign(Target::Serial(9), 100)).unwrap();
        // A later revocation of the key that would lapse does not shorten the kept one.
        store.save(&sign(Target::Key(key), 10)).unwrap();
        assert_eq!(store.load(&a.public_key(), "fleet", 20).len(), 2);
        let mode = std::fs::metadata(d.join("revocations")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let loaded = store.load(&a.public_key(), "fleet", 50);
        assert_eq!(loaded.len(), 2, "one file per target");
        assert!(store.load(&a.public_key(), "yard", 50).is_empty(), "another cluster's");
        assert!(store.load(&key, "fleet", 50).is_empty(), "another authority's");
        // At 100 the serial's revocation lapses, and its file goes.
        assert_eq!(store.load(&a.public_key(), "fleet", 100).len(), 1);
        assert_eq!(std::fs::read_dir(d.join("revocations")).unwrap().count(), 1);
        std::fs::write(d.join("revocations/junk.rev"), "garbage").unwrap();
        assert_eq!(store.load(&a.public_key(), "fleet", 100).len(), 1, "junk skipped");
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90d").unwrap(), 90 * 86_400);
        assert_eq!(parse_duration("2w").unwrap(), 14 * 86_400);
        assert_eq!(parse_duration("3600").unwrap(), 3_600);
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("5y").unwrap_err().to_string().contains("unit"));
        assert!(parse_duration("d").is_err());
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_796_601_599), "2026-12-06 23:59:59 UTC");
    }

    #[test]
    fn a_policy_source_becomes_a_policy_or_an_error_naming_the_rule() {
        let text = r#"
            version = 7
            [[allow]]
            between = ["robots", "ops"]
            [[allow]]
            between = ["cams", "cams"]
            ethertypes = ["ipv4", "arp"]
            vlans = [42]
        "#;
        let p = policy_from_toml(text, "fleet", 100).unwrap();
        assert_eq!((p.version, p.issued, p.rules.len()), (7, 100, 2));
        assert_eq!(p.rules[1].ethertypes, [0x0800, 0x0806]);
        let one = "[[allow]]\nbetween = [\"robots\"]\n";
        assert!(policy_from_toml(one, "fleet", 1).unwrap_err().to_string().contains("number 1"));
        let et = "[[allow]]\nbetween = [\"a\", \"b\"]\nethertypes = [\"ipx\"]\n";
        assert!(policy_from_toml(et, "fleet", 1).unwrap_err().to_string().contains("ipx"));
        assert!(policy_from_toml("[[allow]]\nbetwen = []\n", "fleet", 1).is_err(), "typo");
        assert_eq!(policy_from_toml("", "fleet", 5).unwrap().version, 5, "no rules: nobody talks");
    }

    #[test]
    fn describe_names_each_kind() {
        let a = Identity::from_seed([3; 32]);
        let cert = omni_proto::membership::cert::Certificate {
            serial: 1,
            cluster: "fleet".into(),
            node: Identity::from_seed([4; 32]).public_key(),
            name: "robot-7".into(),
            groups: vec!["robots".into()],
            not_before: 0,
            not_after: 90 * 86_400,
        };
        let text = SignedCertificate::parse(&cert.sign(&a).unwrap()).unwrap().to_text();
        let d = describe(&text, 86_400).unwrap();
        assert!(d.contains("robot-7") && d.contains("expires in 89 days"), "{d}");
        assert!(describe(&text, 90 * 86_400).unwrap().contains("EXPIRED"));
        assert!(describe("nothing", 0).is_err());
    }
}
