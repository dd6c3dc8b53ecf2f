//! The container image scripts/image builds with podman: FROM scratch, nothing in it but the
//! two static binaries and `nft` with its libraries; the binaries run there, and nft writes
//! and lists twill's masquerade table in a network namespace of the test's own. Podman works
//! in a store of the test's own, removed afterwards, so nothing is left behind. Needs root (a
//! network namespace); in CI a missing root or podman fails the test.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use twill_agent::masquerade::{self, Networks};
use twill_tests::netns::{ip, root_or_skip};
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

    /// Runs podman with `input` on its standard input.
    fn with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new("podman")
            .args(&self.global)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podman");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write to podman");
        child.wait_with_output().expect("podman's output")
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

/// A network namespace of the test's own, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// Whether `path`, a file in the image, is one scripts/image means to put there.
fn expected_in_image(path: &str) -> bool {
    let lib = path.starts_with("lib/x86_64-linux-gnu/") && path.contains(".so");
    let copyright = path.starts_with("usr/share/doc/") && path.ends_with("/copyright");
    matches!(
        path,
        "usr/bin/twill" | "usr/bin/twill-cni" | "usr/sbin/nft" | "lib64/ld-linux-x86-64.so.2"
    ) || lib
        || copyright
}

#[test]
fn image_from_scratch_runs_twill_twill_cni_and_nft() {
    if !root_or_skip("image_from_scratch_runs_twill_twill_cni_and_nft")
        || !tool_or_skip("image", "podman")
        || !tool_or_skip("image", "runc")
    {
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

    // Every regular file in the image is one scripts/image put there on purpose, the Debian
    // copyright files included.
    podman.ok(&["create", "--name=twill-files", &tag]);
    let tar = podman.cmd(&["export", "twill-files"]);
    assert!(tar.status.success(), "podman export");
    podman.ok(&["rm", "twill-files"]);
    let mut list = Command::new("tar")
        .args(["-tv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    list.stdin
        .take()
        .expect("stdin")
        .write_all(&tar.stdout)
        .expect("to tar");
    let listing = list.wait_with_output().expect("tar -tv");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|f| f.trim_start_matches("./"))
        .filter(|f| !f.starts_with("etc/") && !f.starts_with("run/"))
        .collect();
    let unexpected: Vec<&&str> = files.iter().filter(|f| !expected_in_image(f)).collect();
    assert!(
        unexpected.is_empty(),
        "unexpected files in the image: {unexpected:?}"
    );
    for f in [
        "usr/bin/twill",
        "usr/sbin/nft",
        "lib64/ld-linux-x86-64.so.2",
        "usr/share/doc/nftables/copyright",
        "usr/share/doc/libc6/copyright",
    ] {
        assert!(files.contains(&f), "{f} is not in the image: {files:?}");
    }

    // The image's nft is the building host's.
    let mut run = RUN.to_vec();
    run.extend(["--entrypoint=/usr/sbin/nft", &*tag, "--version"]);
    let host = Command::new("nft").arg("--version").output().expect("nft");
    assert_eq!(
        podman.ok(&run).trim(),
        String::from_utf8_lossy(&host.stdout).trim()
    );

    // In a network namespace of the test's own, the image's nft writes the table the agent
    // writes (its own ruleset, from the agent's code) and lists it back exactly; the listing
    // from outside the container agrees, so it really is in that namespace.
    let ns = Netns(format!("twimg{}", std::process::id()));
    ip(&["netns", "add", &ns.0]).expect("netns");
    let net = format!("--network=ns:/run/netns/{}", ns.0);
    let n = Networks {
        v4: Some("10.244.0.0/16".parse().expect("v4")),
        v6: Some("fd00:10:244::/56".parse().expect("v6")),
    };
    let in_ns = |args: &[&str]| -> Vec<String> {
        // `-i`: nft -f reads the script from podman's standard input.
        let mut v: Vec<String> = RUN
            .iter()
            .filter(|a| !a.starts_with("--network"))
            .map(|a| a.to_string())
            .collect();
        v.extend([
            "-i".into(),
            net.clone(),
            "--cap-add=NET_ADMIN".into(),
            "--entrypoint=/usr/sbin/nft".into(),
            tag.clone(),
        ]);
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    let args = in_ns(&["-f", "-"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = podman.with_input(&args, &masquerade::ruleset(&n));
    assert!(
        out.status.success(),
        "nft -f in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = in_ns(&["list", "table", "inet", masquerade::TABLE]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listing = podman.ok(&args);
    assert!(
        masquerade::is_exactly(&listing, &n),
        "the image's nft lists another table than the agent writes:\n{listing}"
    );
    let outside = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "table", "inet"])
        .arg(masquerade::TABLE)
        .output()
        .expect("nft on the host");
    assert!(
        masquerade::is_exactly(&String::from_utf8_lossy(&outside.stdout), &n),
        "the table is not in the test's namespace: {}",
        String::from_utf8_lossy(&outside.stderr)
    );

    podman.ok(&["rmi", &tag]);
}
