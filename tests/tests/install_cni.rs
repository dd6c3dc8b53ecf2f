//! `twill install-cni` as an operator (or an init container) runs it: the plugin and the
//! configuration list in place, a second run changing nothing, a runtime able to read the
//! list, `--uninstall` leaving what someone else changed.

use std::process::Command;

use twill_tests::{cni_binary, twill_binary};

#[test]
fn install_cni_puts_the_plugin_and_its_list_in_place_and_takes_them_away() {
    let bin = twill_binary().expect("twill");
    let plugin = cni_binary().expect("twill-cni next to twill");
    let root = tempfile::tempdir().expect("dir");
    let r = root.path();
    std::fs::create_dir_all(r.join("net.d")).expect("conf dir");
    std::fs::write(r.join("net.d/10-flannel.conflist"), "{}").expect("flannel's list");
    let run = |extra: &[&str]| {
        Command::new(&bin)
            .arg("install-cni")
            .arg("--cni-bin-dir")
            .arg(r.join("bin"))
            .arg("--cni-conf-dir")
            .arg(r.join("net.d"))
            .arg("--cni-record")
            .arg(r.join("record.json"))
            .args(extra)
            .output()
            .expect("run twill install-cni")
    };
    let out = run(&[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("wrote") && stdout.contains("10-twill.conflist"),
        "{stdout}"
    );
    assert!(
        stderr.contains("10-flannel.conflist sorts before 10-twill.conflist"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(r.join("bin/twill-cni")).expect("installed"),
        std::fs::read(&plugin).expect("built"),
    );
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(r.join("net.d/10-twill.conflist")).expect("list"),
    )
    .expect("the list is JSON");
    assert_eq!(list["plugins"][0]["type"], "twill-cni");
    assert_eq!(list["plugins"][1]["type"], "portmap");

    // The installed plugin answers VERSION as a runtime would ask it.
    let v = Command::new(r.join("bin/twill-cni"))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("run the installed plugin");
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).expect("VERSION answer");
    assert!(v["supportedVersions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "1.1.0")));

    let again = run(&[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already in place"));

    std::fs::write(r.join("net.d/10-twill.conflist"), "{\"mine\": 1}").expect("edit");
    let out = run(&["--uninstall"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("removed") && stdout.contains("changed since twill wrote it"),
        "{stdout}"
    );
    assert!(!r.join("bin/twill-cni").exists());
    assert!(r.join("net.d/10-twill.conflist").exists());
    assert!(r.join("net.d/10-flannel.conflist").exists());

    let bad = run(&["--cni-network-name", "no spaces allowed"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("network name"));
    assert!(
        !r.join("bin/twill-cni").exists(),
        "nothing written on bad input"
    );
}
