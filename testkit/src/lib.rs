//! Test support shared by ringmirror's crates.
//!
//! - [`ScratchDir`]: a fresh directory on the real disk (never tmpfs: O_DIRECT
//!   behaviour there is not what production sees), removed on drop.
//! - [`require_tool`]: find an external program or fail the test loudly with
//!   the command that installs it (tests never skip silently).
//! - [`random_bytes`], [`write_file`], [`assert_files_equal`].
//! - [`FaultDevice`]: seeded failures and latency around any device.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, SeedableRng};

mod fault;
pub use fault::{FaultDevice, FaultOp};

/// A scratch directory on a real disk, removed when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

fn fs_type(path: &Path) -> Option<i64> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%t"])
        .arg(path)
        .output()
        .ok()?;
    i64::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16).ok()
}

impl ScratchDir {
    /// A new directory under `$RINGMIRROR_TEST_DIR`, else the workspace's
    /// `target/test-scratch`. Panics (fails the test) when that is tmpfs.
    pub fn new(tag: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("RINGMIRROR_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
                    .join("test-scratch")
            });
        fs::create_dir_all(&base).expect("create scratch base dir");
        assert_ne!(
            fs_type(&base),
            Some(TMPFS_MAGIC),
            "{} is on tmpfs: these tests need a real disk for O_DIRECT; set RINGMIRROR_TEST_DIR",
            base.display()
        );
        let path = base.join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("RINGMIRROR_KEEP_SCRATCH").is_none() {
            // A test that mounted a filesystem here and was killed before
            // unmounting it must not have remove_dir_all reach into it:
            // detach every mount under the directory first.
            for m in mounts_under(&self.path) {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mounts,
/// whose paths escape spaces and the like as octal).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let table = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unescape_mount_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (i + 4 <= b.len() && b[i] == b'\\')
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Path of `tool`, or panic with how to install it. Tests call this instead
/// of skipping: a missing tool is a broken test environment, said loudly.
pub fn require_tool(tool: &str, install_hint: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .expect("run sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "required tool `{tool}` is not installed: {install_hint} (./ci.sh installs everything)"
    );
    PathBuf::from(p)
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Create `path` with `data`.
pub fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Create a sparse file of `len` bytes.
pub fn sparse_file(path: &Path, len: u64) {
    let f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(len).expect("set_len");
}

/// Assert two files have identical contents, naming the first differing offset.
pub fn assert_files_equal(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (
        fs::File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display())),
        fs::File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display())),
    );
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    assert_eq!(la, lb, "{} and {} differ in size", a.display(), b.display());
    let mut off = 0u64;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(n, m);
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{} and {} differ at offset {}",
                a.display(),
                b.display(),
                off + i as u64
            );
        }
        off += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// Bytes actually allocated on disk for `path`.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("stat").blocks() * 512
}

#[cfg(test)]
mod tests {
    use super::{mounts_under, unescape_mount_path};
    use std::path::Path;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/tab\\011x\\134y"), "/tab\tx\\y");
        // Not an escape: kept as it is.
        assert_eq!(unescape_mount_path("/x\\09"), "/x\\09");
        assert_eq!(unescape_mount_path("/end\\04"), "/end\\04");
        assert_eq!(unescape_mount_path("/big\\777"), "/big\\777");
    }

    #[test]
    fn mounts_under_finds_proc_deepest_first_and_nothing_in_a_plain_dir() {
        // /proc is a mount point on every Linux machine; a fresh scratch dir holds none.
        let m = mounts_under(Path::new("/proc"));
        assert!(m.iter().any(|p| p == Path::new("/proc")), "{m:?}");
        let depth: Vec<usize> = m.iter().map(|p| p.components().count()).collect();
        assert!(depth.windows(2).all(|w| w[0] >= w[1]), "{m:?}");
        let d = super::ScratchDir::new("mounts-under");
        assert!(mounts_under(d.path()).is_empty());
    }
}
