//! The container image scripts/image builds with podman: FROM scratch, nothing in it but the
//! two static binaries, and both run there. Podman works in a store of the test's own, removed
//! afterwards, so nothing is left behind.

use std::process::{Command, Output};

use twill_tests::{run_script, tool_or_skip};

/// Podman's global options: a store and run directory of this test's, vfs storage (works on any
/// filesystem, even inside another container), cgroupfs and file events (no systemd needed).
fn podman_global(dir: &std::path::Path) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("--root={d}/root"),
        format!("--runroot={d}/run"),
        "--storage-driver=vfs".into(),
        "--cgroup-manager=cgroupfs".into(),
        "--events-backend=file".into(),
    ]
}

/// `podman run --rm` options that work on CI machines and in nested containers: runc, which
/// copes with hybrid cgroup hierarchies where crun refuses them, and open-file and process limits
/// below any hard limit (podman's defaults are above some, and raising one needs a privilege a
/// nested container lacks). No network: nothing here needs one.
const RUN: [&str; 7] = [
    "run",
    "--rm",
    "--runtime=runc",
    "--network=none",
    "--ulimit=nofile=1024:1024",
    "--ulimit=nproc=1024:1024",
    "--pull=never",
];

struct Podman {
    global: Vec<String>,
    _store: tempfile::TempDir,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(&self.global)
            .args(args)
            .output()
            .expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

impl Drop for Podman {
    /// Everything the test made goes with the store; `system reset` first, so no container or
    /// mount outlives it.
    fn drop(&mut self) {
        let _ = self.cmd(&["system", "reset", "--force"]);
    }
}

#[test]
fn image_from_scratch_runs_twill_and_twill_cni() {
    if !tool_or_skip("image", "podman") || !tool_or_skip("image", "runc") {
        return;
    }
    let store = tempfile::tempdir().expect("dir");
    let podman = Podman {
        global: podman_global(store.path()),
        _store: store,
    };
    let command = format!("podman {}", podman.global.join(" "));
    let tag = run_script("image", &[("PODMAN", &command)]);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(tag, format!("twill:{version}"));

    // One layer, the COPY: FROM scratch brought none.
    let layers = podman.ok(&[
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        &tag,
    ]);
    assert_eq!(layers.trim(), "1", "layers of {tag}");

    let mut run = RUN.to_vec();
    run.extend([&*tag, "--version"]);
    assert_eq!(podman.ok(&run).trim(), format!("twill {version}"));

    let mut run = RUN.to_vec();
    run.extend([
        "--entrypoint=/usr/bin/twill-cni",
        "--env=CNI_COMMAND=VERSION",
        &*tag,
    ]);
    let answer = podman.ok(&run);
    assert!(
        answer.contains("\"supportedVersions\""),
        "twill-cni VERSION in the image: {answer}"
    );

    // A host name resolves in the static binary with no NSS modules beside it (glibc has its
    // `files` and `dns` lookups built in): localhost, from the /etc/hosts podman provides, is
    // found, and the connection to it is refused.
    let mut run = RUN.to_vec();
    run.extend([&*tag, "status", "--controller", "http://localhost:1"]);
    let out = podman.cmd(&run);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("connection refused"),
        "twill status --controller http://localhost:1 in the image: {said}"
    );

    // Nothing else is there: no shell to run.
    let mut run = RUN.to_vec();
    run.extend(["--entrypoint=/bin/sh", &*tag, "-c", "true"]);
    let out = podman.cmd(&run);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("/bin/sh") && said.contains("no such file"),
        "the image has a /bin/sh, or podman failed otherwise: {said}"
    );

    podman.ok(&["rmi", &tag]);
}
