//! `twill install-cni`: puts `twill-cni` in the CNI binary directory and a network
//! configuration list (twill-cni, then portmap) in the configuration directory, as flannel's
//! init container does. Each file is written to a temporary name and renamed, so a runtime
//! never reads half of one; what was written is recorded with its SHA-256, so `--uninstall`
//! removes only files that are still exactly as twill left them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cni::DEFAULT_SUBNET_FILE;

pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_CONF_NAME: &str = "10-twill.conflist";
pub const DEFAULT_NETWORK_NAME: &str = "twill";
/// The plugin's file name in the binary directory: the conflist's `type`.
pub const PLUGIN: &str = "twill-cni";

#[derive(Clone, Debug)]
pub struct Options {
    /// The `twill-cni` binary to copy.
    pub plugin: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_name: String,
    pub network_name: String,
    pub subnet_file: PathBuf,
    /// Where the record of written files is kept.
    pub record: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The configuration list runtimes read: twill-cni (which delegates to bridge and
/// host-local with the node's subnet) and portmap for `hostPort`s. The subnet file is named
/// only when it is not the default, so the usual file reads like flannel's.
pub fn conflist(network_name: &str, subnet_file: &Path) -> Value {
    let mut plugin = json!({"type": PLUGIN});
    if subnet_file != Path::new(DEFAULT_SUBNET_FILE) {
        plugin["subnetFile"] = json!(subnet_file);
    }
    json!({
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": [plugin, {"type": "portmap", "capabilities": {"portMappings": true}}],
    })
}

/// A CNI network name (the spec: letters, digits, `_`, `.`, `-`, starting with a letter or
/// digit) and a configuration file name runtimes read (`*.conflist`, no directory part).
pub fn check(o: &Options) -> Result<(), InstallError> {
    let n = &o.network_name;
    let name_ok = n.len() <= 253
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(InstallError::Invalid(format!(
            "network name {n:?}: letters, digits, '_', '.' and '-', starting with a letter or digit"
        )));
    }
    let f = &o.conf_name;
    if f.contains('/') || !f.ends_with(".conflist") || f.len() <= ".conflist".len() {
        return Err(InstallError::Invalid(format!(
            "configuration file name {f:?}: a file name ending in .conflist, no directory"
        )));
    }
    Ok(())
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one file became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Written(PathBuf),
    Unchanged(PathBuf),
    Removed(PathBuf),
    /// Changed by someone since twill wrote it, or never written by twill: left alone.
    Left(PathBuf, &'static str),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Written(p) => write!(f, "wrote {}", p.display()),
            Change::Unchanged(p) => write!(f, "{} already in place", p.display()),
            Change::Removed(p) => write!(f, "removed {}", p.display()),
            Change::Left(p, why) => write!(f, "left {} ({why})", p.display()),
        }
    }
}

/// Writes `bytes` at `path` unless it already holds them: a temporary file in the same
/// directory, synced, given `mode`, renamed over the old one (a running plugin keeps its inode).
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<Change, InstallError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        let perm = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(path, perm).map_err(io(path))?;
        return Ok(Change::Unchanged(path.to_path_buf()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.twill-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    // The rename itself is durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Change::Written(path.to_path_buf()))
}

fn targets(o: &Options) -> (PathBuf, PathBuf) {
    (o.bin_dir.join(PLUGIN), o.conf_dir.join(&o.conf_name))
}

/// Installs (or brings back in line) both files and records them. Also returns the
/// configuration files that sort before ours: runtimes use the first, so those would win.
pub fn install(o: &Options) -> Result<(Vec<Change>, Vec<PathBuf>), InstallError> {
    check(o)?;
    let plugin = std::fs::read(&o.plugin).map_err(io(&o.plugin))?;
    let (bin, conf) = targets(o);
    let mut text = serde_json::to_string_pretty(&conflist(&o.network_name, &o.subnet_file))
        .map_err(|e| InstallError::Invalid(e.to_string()))?;
    text.push('\n');
    let changes = vec![
        put(&bin, &plugin, 0o755)?,
        put(&conf, text.as_bytes(), 0o644)?,
    ];
    let record = json!({
        "files": [
            {"path": bin, "sha256": sha256(&plugin)},
            {"path": conf, "sha256": sha256(text.as_bytes())},
        ],
    });
    put(&o.record, format!("{record:#}\n").as_bytes(), 0o600)?;
    Ok((changes, earlier_configs(&o.conf_dir, &o.conf_name)))
}

/// Configuration files a runtime would read before `ours` (it takes the first by name).
fn earlier_configs(dir: &Path, ours: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.as_str() < ours
                && !n.starts_with('.')
                && [".conf", ".conflist", ".json"]
                    .iter()
                    .any(|s| n.ends_with(s))
        })
        .map(|n| dir.join(n))
        .collect();
    v.sort();
    v
}

/// Removes what the record says twill wrote, file by file, only where the file is still
/// exactly as written; then the record. Without a record there is nothing of ours to remove.
pub fn uninstall(o: &Options) -> Result<Vec<Change>, InstallError> {
    let text = match std::fs::read_to_string(&o.record) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&o.record)(e)),
    };
    let record: Value = serde_json::from_str(&text).map_err(|e| {
        InstallError::Invalid(format!(
            "{}: not a record twill wrote ({e}); remove the files by hand",
            o.record.display()
        ))
    })?;
    let mut changes = Vec::new();
    for f in record["files"].as_array().into_iter().flatten() {
        let (Some(path), Some(want)) = (f["path"].as_str(), f["sha256"].as_str()) else {
            continue;
        };
        let path = PathBuf::from(path);
        match std::fs::read(&path) {
            Ok(bytes) if sha256(&bytes) == want => {
                std::fs::remove_file(&path).map_err(io(&path))?;
                changes.push(Change::Removed(path));
            }
            Ok(_) => changes.push(Change::Left(path, "changed since twill wrote it")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    std::fs::remove_file(&o.record).map_err(io(&o.record))?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(root: &Path) -> Options {
        let plugin = root.join("build").join("twill-cni");
        std::fs::create_dir_all(plugin.parent().expect("dir")).expect("mkdir");
        std::fs::write(&plugin, b"\x7fELF plugin v1").expect("plugin");
        Options {
            plugin,
            bin_dir: root.join("opt/cni/bin"),
            conf_dir: root.join("etc/cni/net.d"),
            conf_name: DEFAULT_CONF_NAME.into(),
            network_name: DEFAULT_NETWORK_NAME.into(),
            subnet_file: DEFAULT_SUBNET_FILE.into(),
            record: root.join("var/lib/twill/cni-install.json"),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("file").permissions().mode() & 0o777
    }

    #[test]
    fn the_conflist_reads_like_flannels_and_names_an_unusual_subnet_file() {
        let c = conflist("twill", Path::new(DEFAULT_SUBNET_FILE));
        assert_eq!(c["plugins"][0], json!({"type": "twill-cni"}));
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
        let c = conflist("twill", Path::new("/run/twill/subnet.env"));
        assert_eq!(c["plugins"][0]["subnetFile"], "/run/twill/subnet.env");
    }

    #[test]
    fn install_is_idempotent_and_uninstall_removes_only_what_is_still_ours() {
        let root = tempfile::tempdir().expect("dir");
        let o = options(root.path());
        std::fs::create_dir_all(&o.conf_dir).expect("conf dir");
        std::fs::write(o.conf_dir.join("10-flannel.conflist"), "{}").expect("flannel's");
        std::fs::write(o.conf_dir.join("99-loopback.conf"), "{}").expect("later one");

        let (changes, earlier) = install(&o).expect("install");
        let (bin, conf) = targets(&o);
        assert_eq!(
            changes,
            [Change::Written(bin.clone()), Change::Written(conf.clone())]
        );
        assert_eq!(earlier, [o.conf_dir.join("10-flannel.conflist")]);
        assert_eq!(
            (mode(&bin), mode(&conf), mode(&o.record)),
            (0o755, 0o644, 0o600)
        );
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&conf).expect("conf")).expect("JSON");
        assert_eq!(written, conflist("twill", Path::new(DEFAULT_SUBNET_FILE)));

        // Again: nothing rewritten, the same inode; no temporary file left.
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("f"));
        let before = ino(&bin);
        let (changes, _) = install(&o).expect("again");
        assert_eq!(
            changes,
            [
                Change::Unchanged(bin.clone()),
                Change::Unchanged(conf.clone())
            ]
        );
        assert_eq!(ino(&bin), before);
        let stray = std::fs::read_dir(&o.bin_dir)
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(stray, 0);

        // A new plugin replaces the old one; the operator then edits the conflist by hand.
        std::fs::write(&o.plugin, b"\x7fELF plugin v2").expect("v2");
        let (changes, _) = install(&o).expect("upgrade");
        assert_eq!(changes[0], Change::Written(bin.clone()));
        assert_eq!(std::fs::read(&bin).expect("bin"), b"\x7fELF plugin v2");
        std::fs::write(&conf, "{\"edited\": true}").expect("edit");

        let changes = uninstall(&o).expect("uninstall");
        assert_eq!(
            changes,
            [
                Change::Removed(bin.clone()),
                Change::Left(conf.clone(), "changed since twill wrote it")
            ]
        );
        assert!(!bin.exists() && conf.exists() && !o.record.exists());
        assert!(o.conf_dir.join("10-flannel.conflist").exists(), "not ours");
        assert_eq!(uninstall(&o).expect("again"), [], "nothing left of ours");
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let root = tempfile::tempdir().expect("dir");
        for (name, file) in [
            ("-bad", DEFAULT_CONF_NAME),
            ("has space", DEFAULT_CONF_NAME),
            ("twill", "../10-twill.conflist"),
            ("twill", "10-twill.conf"),
        ] {
            let mut o = options(root.path());
            o.network_name = name.into();
            o.conf_name = file.into();
            assert!(
                matches!(install(&o), Err(InstallError::Invalid(_))),
                "{name} {file}"
            );
            assert!(!o.bin_dir.exists() && !o.record.exists());
        }
        let mut o = options(root.path());
        o.plugin = root.path().join("missing");
        assert!(matches!(install(&o), Err(InstallError::Io { .. })));
        assert!(!o.bin_dir.exists());
    }
}
