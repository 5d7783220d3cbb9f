//! Identity files on disk (feature `store`, the only file I/O in this crate): created with
//! mode 0600, refused when other users could read them, never overwritten without `force`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::Identity;

#[derive(Debug, thiserror::Error)]
pub enum IdentityStoreError {
    #[error("{0} already exists; pass --force to replace it (the key in it is lost)")]
    Exists(String),
    #[error("no identity at {0}; create one with: omni-daemon --init --identity {0}")]
    Missing(String),
    #[error(
        "{what} {path} has mode {mode:04o}, readable by other users; fix it with: chmod 600 {path}"
    )]
    TooOpen { what: &'static str, path: String, mode: u32 },
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error(transparent)]
    Malformed(#[from] crate::IdentityError),
}

fn io<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> IdentityStoreError + 'p {
    move |source| IdentityStoreError::Io { what, path: path.display().to_string(), source }
}

/// Creates a new identity at `path`. Parent directories are created with mode 0700.
pub fn init(path: &Path, force: bool) -> Result<Identity, IdentityStoreError> {
    let id = Identity::generate();
    write_private(path, id.to_file_text().as_bytes(), force)?;
    Ok(id)
}

/// Writes a file that holds a secret with mode 0600 (parent directories 0700), never
/// replacing an existing one without `force`.
pub fn write_private(path: &Path, bytes: &[u8], force: bool) -> Result<(), IdentityStoreError> {
    if path.exists() && !force {
        return Err(IdentityStoreError::Exists(path.display().to_string()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create directory", dir))?;
    }
    // Write a temporary file with the final mode, then rename over: a crash never leaves a
    // half-written file, and the secret is never in a file with a looser mode.
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    Ok(())
}

/// Loads the identity at `path`, refusing a file other users can read or write.
pub fn load(path: &Path) -> Result<Identity, IdentityStoreError> {
    load_key(path, "identity file")
}

/// Loads the key in a file of another kind (`what`, e.g. "authority file"), refusing a
/// file other users can read or write.
pub fn load_key(path: &Path, what: &'static str) -> Result<Identity, IdentityStoreError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityStoreError::Missing(path.display().to_string()));
        }
        Err(e) => return Err(io("read", path)(e)),
    };
    check_private(&meta, what, path)?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io("read", path))?);
    Ok(Identity::from_file_text(&text, &path.display().to_string())?)
}

/// Refuses a file that holds a secret (`what`) when other users can read or write it.
pub fn check_private(
    meta: &std::fs::Metadata,
    what: &'static str,
    path: &Path,
) -> Result<(), IdentityStoreError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityStoreError::TooOpen { what, path: path.display().to_string(), mode });
    }
    Ok(())
}

/// Reads a file holding a secret (`what`, e.g. "cluster secret file"), refusing it when
/// other users can read or write it. Surrounding whitespace is trimmed.
pub fn read_private(
    path: &Path,
    what: &'static str,
) -> Result<zeroize::Zeroizing<String>, IdentityStoreError> {
    let meta = std::fs::metadata(path).map_err(io("read", path))?;
    check_private(&meta, what, path)?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io("read", path))?);
    Ok(zeroize::Zeroizing::new(text.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_load_force_and_permissions() {
        let d = std::env::temp_dir().join(format!("omni-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let p = d.join("sub/identity.key");
        let id = init(&p, false).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&p).unwrap().public_key(), id.public_key());
        assert!(matches!(init(&p, false), Err(IdentityStoreError::Exists(_))));
        let id2 = init(&p, true).unwrap();
        assert_ne!(id2.public_key(), id.public_key());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(matches!(load(&d.join("none")), Err(IdentityStoreError::Missing(_))));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "garbage\n").unwrap();
        assert!(matches!(load(&p), Err(IdentityStoreError::Malformed(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
