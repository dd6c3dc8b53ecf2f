//! The Debian package scripts/package builds: its fields, every file in it with its mode, the
//! /etc/default files as conffiles, units installed but not enabled, and binaries that run
//! once unpacked. Lintian, when installed, finds no error in it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use twill_tests::{run_script, tool_or_skip, workspace_root};

/// What the package must hold: path, mode as `dpkg-deb --contents` shows it, and for shipped
/// text the file in the tree it must be a copy of.
const FILES: [(&str, &str, Option<&str>); 7] = [
    ("./usr/bin/twill", "-rwxr-xr-x", None),
    ("./usr/bin/twill-cni", "-rwxr-xr-x", None),
    (
        "./lib/systemd/system/twill-controller.service",
        "-rw-r--r--",
        Some("deploy/systemd/twill-controller.service"),
    ),
    (
        "./lib/systemd/system/twill-agent.service",
        "-rw-r--r--",
        Some("deploy/systemd/twill-agent.service"),
    ),
    (
        "./etc/default/twill-controller",
        "-rw-r--r--",
        Some("deploy/systemd/twill-controller.default"),
    ),
    (
        "./etc/default/twill-agent",
        "-rw-r--r--",
        Some("deploy/systemd/twill-agent.default"),
    ),
    (
        "./usr/share/doc/twill/README.md",
        "-rw-r--r--",
        Some("README.md"),
    ),
];

fn dpkg_deb(args: &[&str], deb: &str) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Path to (mode, owner) for every entry of `dpkg-deb --contents`.
fn contents(listing: &str) -> BTreeMap<String, (String, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.to_string();
            Some((path, (f[0].to_string(), f[1].to_string())))
        })
        .collect()
}

#[test]
fn package_holds_binaries_units_and_conffiles_and_runs_unpacked() {
    if !tool_or_skip("package", "cargo-deb") || !tool_or_skip("package", "dpkg-deb") {
        return;
    }
    let deb = run_script("package", &[]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(&format!("twill_{version}-1_amd64.deb")),
        "scripts/package printed {deb:?}"
    );

    let fields = dpkg_deb(&["--info"], &deb);
    for want in [
        "Package: twill",
        &format!("Version: {version}-1"),
        "Architecture: amd64",
        "Depends: nftables",
        "Recommends: containernetworking-plugins",
    ] {
        assert!(
            fields.lines().any(|l| l.trim() == want),
            "no {want:?} in\n{fields}"
        );
    }

    let listing = dpkg_deb(&["--contents"], &deb);
    let entries = contents(&listing);
    for (path, mode, _) in FILES {
        let (got, owner) = entries
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        assert_eq!(got, mode, "mode of {path}");
        assert_eq!(owner, "0/0", "owner of {path}");
    }

    // The control area: the /etc/default files are conffiles, kept on upgrade and removal, and
    // no maintainer script enables or starts a unit.
    let control = tempfile::tempdir().expect("dir");
    let c = control.path().to_str().expect("utf-8 path");
    let out = Command::new("dpkg-deb")
        .args(["--control", &deb, c])
        .output()
        .expect("run dpkg-deb --control");
    assert!(out.status.success(), "dpkg-deb --control");
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).expect("conffiles");
    let mut listed: Vec<&str> = conffiles.lines().map(str::trim).collect();
    listed.sort();
    assert_eq!(
        listed,
        ["/etc/default/twill-agent", "/etc/default/twill-controller"]
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        if let Ok(text) = std::fs::read_to_string(control.path().join(script)) {
            assert!(
                !text.contains("enable") && !text.contains("start"),
                "{script} enables or starts a unit:\n{text}"
            );
        }
    }

    // Unpacked: the shipped text is the tree's, and the binaries run with nothing beside them.
    let root = tempfile::tempdir().expect("dir");
    let out = Command::new("dpkg-deb")
        .args(["-x", &deb])
        .arg(root.path())
        .output()
        .expect("run dpkg-deb -x");
    assert!(out.status.success(), "dpkg-deb -x");
    for (path, _, source) in FILES {
        if let Some(source) = source {
            let shipped = std::fs::read(root.path().join(path)).expect("unpacked file");
            let tree = std::fs::read(workspace_root().join(source)).expect("tree file");
            assert!(shipped == tree, "{path} differs from {source}");
        }
    }
    let bin = root.path().join("usr/bin");
    let out = run(Command::new(bin.join("twill")).arg("--version"));
    assert_eq!(out.trim(), format!("twill {version}"));
    let out = run(Command::new(bin.join("twill-cni")).env("CNI_COMMAND", "VERSION"));
    assert!(
        out.contains("\"supportedVersions\""),
        "twill-cni VERSION: {out}"
    );

    lintian_finds_no_error(Path::new(&deb));
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run an unpacked binary");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Lintian's errors ("E:" lines) fail the test; its warnings and pedantic tags do not. Not run
/// when lintian is not installed (scripts/test does not install it: it is large).
fn lintian_finds_no_error(deb: &Path) {
    let Ok(out) = Command::new("lintian").arg(deb).output() else {
        eprintln!("lintian not installed: not run");
        return;
    };
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
}
