//! The data dir: format marker, node key, single-node lock, and where everything lives.
//!
//! Layout: `FORMAT` (text: `distribox-data-dir <N>`), `node.key` (Ed25519 secret,
//! mode 0600), `group.key` (group id ‖ group secret, 64 bytes, mode 0600: whoever
//! holds it is a member), `node.lock` (flock'd by the running node; holds its pid), `db/`
//! (RocksDB), `spill/` (write-back staging of open files), `control.sock`, `node.log`
//! (and `node.log.1`, see `daemon::logfile`).

use ed25519_dalek::SigningKey;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// On-disk format this build writes. 3: chunks keyed in write order (see `store`);
/// 4: records may be sealed in batches (record format 2, `model::seal`), which
/// builds before it cannot read.
pub const FORMAT_VERSION: u32 = 4;
/// Oldest format this build opens (and upgrades in place: format 2 differs only in
/// how chunks are keyed, format 3 in how records are signed, and this build reads
/// all of them).
const OLDEST_READABLE: u32 = 2;
const FORMAT_MAGIC: &str = "distribox-data-dir";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {path} is not initialised; run `distribox init` (or `distribox mount`, which initialises it)")]
    NotInitialised { path: PathBuf },
    #[error("data dir {path} was written by a newer Distribox (format {found}); this build reads format {FORMAT_VERSION} — upgrade distribox")]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("data dir {path} has format {found}, from a development build before sync (format {OLDEST_READABLE}); move it aside and run `distribox init` again")]
    OlderFormat { path: PathBuf, found: u32 },
    #[error("{path} is not a Distribox data dir (unrecognised FORMAT file)")]
    Unrecognised { path: PathBuf },
    #[error("data dir {path} is in use by another running node{}; stop it first (`distribox unmount`)", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("data dir {path} is not empty and holds no Distribox data; choose another --data-dir")]
    NotEmpty { path: PathBuf },
    #[error("node key {path} is damaged (expected 32 bytes)")]
    BadKey { path: PathBuf },
    #[error("group key {path} is damaged (expected 64 bytes)")]
    BadGroupKey { path: PathBuf },
    #[error("API key {path} is damaged (expected 64 hex digits); delete it and restart the node to make a new one")]
    BadApiKey { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, DataDirError>;

/// Creates `path` (it must not exist) readable only by the owner, with `bytes`,
/// synced: node, group and API keys.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Membership of a group: its public id (names the group, seeds the root entry id)
/// and the 256-bit secret every member holds (the network's pre-shared key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GroupKey {
    pub id: [u8; 32],
    pub secret: [u8; 32],
}

impl GroupKey {
    pub fn generate() -> Self {
        GroupKey {
            id: rand::random(),
            secret: rand::random(),
        }
    }
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "GroupKey({})", hex::encode(&self.id[..4]))
    }
}

/// Paths inside one data dir.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

/// Held while a node runs; dropping it releases the data dir.
pub struct DataDirLock {
    _file: File,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db")
    }
    pub fn spill_dir(&self) -> PathBuf {
        self.root.join("spill")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("node.log")
    }
    fn format_path(&self) -> PathBuf {
        self.root.join("FORMAT")
    }
    fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }
    fn lock_path(&self) -> PathBuf {
        self.root.join("node.lock")
    }
    fn group_path(&self) -> PathBuf {
        self.root.join("group.key")
    }

    fn api_key_path(&self) -> PathBuf {
        self.root.join("api.key")
    }

    /// The key that the REST API and web GUI require (`X-API-Key`), made on first
    /// use: 256 random bits as hex, readable only by the owner. Deleting the file
    /// and restarting the node changes it. Written to a temp file and linked into
    /// place, so a reader or a crash never sees a half-written key, and two
    /// creators agree on one.
    pub fn api_key(&self) -> Result<String> {
        if let Some(k) = self.read_api_key()? {
            return Ok(k);
        }
        let p = self.api_key_path();
        let tmp = self.root.join(format!("api.key.{}.tmp", std::process::id()));
        let key = hex::encode(rand::random::<[u8; 32]>());
        let _ = fs::remove_file(&tmp);
        write_secret(&tmp, format!("{key}\n").as_bytes())?;
        let linked = fs::hard_link(&tmp, &p);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(key),
            // Someone else made it first: theirs is the key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.read_api_key()?.ok_or(DataDirError::BadApiKey { path: p })
            }
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// The API key if one was made (None: no node has served a GUI yet).
    pub fn read_api_key(&self) -> Result<Option<String>> {
        let p = self.api_key_path();
        match fs::read_to_string(&p) {
            Ok(k) if k.trim().len() == 64 && k.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(k.trim().to_string()))
            }
            Ok(_) => Err(DataDirError::BadApiKey { path: p }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Checks the format marker without changing anything.
    pub fn check(&self) -> Result<()> {
        self.format().map(|_| ())
    }

    /// Marks an opened data dir of an older readable format as this build's (after
    /// that, older builds refuse it with a clear error instead of misreading it).
    pub fn upgrade_format(&self) -> Result<()> {
        if self.format()? == FORMAT_VERSION {
            return Ok(());
        }
        let (fp, tmp) = (self.format_path(), self.root.join("FORMAT.tmp"));
        fs::write(&tmp, format!("{FORMAT_MAGIC} {FORMAT_VERSION}\n")).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &fp).map_err(io_err(&fp))
    }

    fn format(&self) -> Result<u32> {
        let path = self.format_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataDirError::NotInitialised {
                    path: self.root.clone(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let found = text
            .trim()
            .strip_prefix(FORMAT_MAGIC)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| DataDirError::Unrecognised {
                path: self.root.clone(),
            })?;
        if found > FORMAT_VERSION {
            return Err(DataDirError::NewerFormat {
                path: self.root.clone(),
                found,
            });
        }
        if found < OLDEST_READABLE {
            return Err(DataDirError::OlderFormat {
                path: self.root.clone(),
                found,
            });
        }
        Ok(found)
    }

    pub fn is_initialised(&self) -> bool {
        self.format_path().exists()
    }

    /// Creates the data dir, a fresh node identity and membership of `group` (a new
    /// group when None). Refuses a non-empty directory that is not ours, and never
    /// touches an initialised one (returns Ok(false)).
    pub fn init(&self, group: Option<GroupKey>) -> Result<bool> {
        if self.is_initialised() {
            self.check()?;
            return Ok(false);
        }
        if let Ok(mut rd) = fs::read_dir(&self.root) {
            if rd.next().is_some() {
                return Err(DataDirError::NotEmpty {
                    path: self.root.clone(),
                });
            }
        }
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(io_err(&self.root))?;
        let key = SigningKey::from_bytes(&rand::random());
        write_secret(&self.key_path(), &key.to_bytes())?;
        let group = group.unwrap_or_else(GroupKey::generate);
        let mut bytes = group.id.to_vec();
        bytes.extend_from_slice(&group.secret);
        write_secret(&self.group_path(), &bytes)?;
        // FORMAT last: its presence means "fully initialised".
        let fp = self.format_path();
        fs::write(&fp, format!("{FORMAT_MAGIC} {FORMAT_VERSION}\n")).map_err(io_err(&fp))?;
        Ok(true)
    }

    pub fn load_key(&self) -> Result<SigningKey> {
        let kp = self.key_path();
        let mut buf = Vec::new();
        File::open(&kp)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io_err(&kp))?;
        let bytes: [u8; 32] = buf.try_into().map_err(|_| DataDirError::BadKey { path: kp.clone() })?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    pub fn load_group(&self) -> Result<GroupKey> {
        let gp = self.group_path();
        let buf = fs::read(&gp).map_err(io_err(&gp))?;
        if buf.len() != 64 {
            return Err(DataDirError::BadGroupKey { path: gp });
        }
        Ok(GroupKey {
            id: buf[..32].try_into().expect("length checked"),
            secret: buf[32..].try_into().expect("length checked"),
        })
    }

    /// Pid of the node holding the lock, if any (without taking it).
    pub fn running_pid(&self) -> Option<u32> {
        let lp = self.lock_path();
        let f = File::open(&lp).ok()?;
        // SAFETY: flock on a valid fd we own.
        let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            return None;
        }
        let pid = fs::read_to_string(&lp).ok()?.trim().parse().ok();
        Some(pid.unwrap_or(0))
    }

    /// Takes the exclusive node lock, or says who holds it.
    pub fn lock(&self) -> Result<DataDirLock> {
        let lp = self.lock_path();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lp)
            .map_err(io_err(&lp))?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = fs::read_to_string(&lp).ok().and_then(|s| s.trim().parse().ok());
            return Err(DataDirError::Locked {
                path: self.root.clone(),
                pid,
            });
        }
        f.set_len(0).map_err(io_err(&lp))?;
        writeln!(f, "{}", std::process::id()).map_err(io_err(&lp))?;
        Ok(DataDirLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_check_then_lock_is_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path().join("d"));
        assert!(matches!(d.check(), Err(DataDirError::NotInitialised { .. })));
        assert!(d.init(None).unwrap());
        assert!(!d.init(None).unwrap());
        let g = d.load_group().unwrap();
        assert_eq!(g, d.load_group().unwrap());
        d.check().unwrap();
        let k1 = d.load_key().unwrap();
        assert_eq!(k1.to_bytes(), d.load_key().unwrap().to_bytes());
        let _l = d.lock().unwrap();
        assert!(matches!(d.lock(), Err(DataDirError::Locked { .. })));
        assert_eq!(d.running_pid(), Some(std::process::id()));
    }

    #[test]
    fn format_2_is_opened_and_upgraded_older_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path().join("d"));
        d.init(None).unwrap();
        fs::write(d.format_path(), "distribox-data-dir 2\n").unwrap();
        d.check().unwrap();
        d.upgrade_format().unwrap();
        assert_eq!(
            fs::read_to_string(d.format_path()).unwrap(),
            format!("distribox-data-dir {FORMAT_VERSION}\n")
        );
        fs::write(d.format_path(), "distribox-data-dir 1\n").unwrap();
        assert!(matches!(d.check(), Err(DataDirError::OlderFormat { found: 1, .. })));
        assert!(d.upgrade_format().is_err());
    }

    #[test]
    fn newer_format_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path());
        fs::write(t.path().join("FORMAT"), "distribox-data-dir 99\n").unwrap();
        assert!(matches!(d.check(), Err(DataDirError::NewerFormat { found: 99, .. })));
        assert!(d.init(None).is_err());
    }
}
