//! What ships for Kubernetes (deploy/kubernetes): every object passes the Kubernetes 1.30
//! schemas strictly (offline, with kubernetes-validate), the agent gets exactly the privileges
//! it needs, the controller's member ids, peers and Services agree, and every twill flag the
//! manifests use is one the real binary accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;
use twill_tests::{twill_binary, workspace_root};

/// The Kubernetes version the manifests are checked against.
const KUBERNETES: &str = "1.30.0";
/// Where scripts/test installs kubernetes-validate (a venv, away from Debian's Python).
const VENV_VALIDATOR: &str = "/opt/twill-test-venv/bin/kubernetes-validate";

fn dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// The manifests `kubectl apply -f deploy/kubernetes` applies (not monitoring/, which needs a CRD).
fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "manifests: {v:?}");
    v
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn all_documents() -> Vec<Value> {
    manifests().iter().flat_map(|p| documents(p)).collect()
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

/// kubernetes-validate from the venv scripts/test makes, or from PATH. Missing: in CI
/// (`CI=true`) the test fails, elsewhere it says skipped.
fn validator(test: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubernetes-validate"))
            .find(|f| f.is_file())
    });
    let found = on_path.or_else(|| Some(PathBuf::from(VENV_VALIDATOR)).filter(|p| p.is_file()));
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test} needs kubernetes-validate, which scripts/test installs: failing instead of skipping");
        }
        eprintln!("skipped: {test} needs kubernetes-validate ({VENV_VALIDATOR} or on PATH)");
    }
    found
}

/// `Ok(its output)` when the validator passes every file strictly, else `Err(its output)`.
fn validate(tool: &Path, files: &[PathBuf]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(["--kubernetes-version", KUBERNETES, "--strict"])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

#[test]
fn manifests_pass_the_kubernetes_schemas_strictly() {
    let Some(tool) = validator("manifests_pass_the_kubernetes_schemas_strictly") else {
        return;
    };
    let files = manifests();
    let said = validate(&tool, &files).expect("every manifest validates");
    eprintln!("{said}");
    // Every object was checked against a schema: none passed for want of one.
    let objects = all_documents().len();
    let passed = said.matches("passed for resource").count();
    assert_eq!(passed, objects, "{said}");
    assert!(!said.contains("Couldn't find schema"), "{said}");

    // The validator bites: an unknown field and a wrong type are each refused.
    let scratch = tempfile::tempdir().expect("dir");
    let agent = std::fs::read_to_string(dir().join("30-agent.yaml")).expect("agent");
    let controller = std::fs::read_to_string(dir().join("20-controller.yaml")).expect("ctl");
    for (name, text, from, to, complaint) in [
        (
            "unknown-field.yaml",
            &agent,
            "      hostNetwork: true",
            "      hostNetwrk: true",
            "'hostNetwrk' was unexpected",
        ),
        (
            "wrong-type.yaml",
            &controller,
            "  replicas: 3",
            "  replicas: three",
            "'three' is not of type 'integer'",
        ),
    ] {
        let broken = text.replacen(from, to, 1);
        assert_ne!(&broken, text, "{from} is in the manifest");
        let path = scratch.path().join(name);
        std::fs::write(&path, broken).expect("write");
        let said = validate(&tool, &[path]).expect_err(name);
        assert!(said.contains(complaint), "{name}: {said}");
    }
}

#[test]
fn the_agent_daemonset_has_exactly_the_privileges_it_needs() {
    let docs = all_documents();
    let ds = object(&docs, "DaemonSet", "twill-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let sa = object(&docs, "ServiceAccount", "twill-agent");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"].as_str().is_some_and(|k| k.contains("Role"))),
        "twill calls no Kubernetes API: no RBAC objects"
    );
    // Every taint tolerated: a toleration with operator Exists and no key.
    let tolerations = pod["tolerations"].as_sequence().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{tolerations:?}"
    );

    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let agent = &containers[0];
    assert_eq!(strings(&agent["args"])[0], "agent");
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let wanted: BTreeSet<String> = ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]
        .map(String::from)
        .into();
    assert_eq!(added, wanted);

    // Probes on the metrics port, which --metrics-addr serves.
    let port = &agent["ports"][0];
    assert_eq!(port["name"], "metrics");
    let metrics_port = port["containerPort"].as_u64().expect("port");
    assert!(strings(&agent["args"]).contains(&format!("--metrics-addr=0.0.0.0:{metrics_port}")));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(agent[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(agent[probe]["httpGet"]["port"], "metrics", "{probe}");
    }

    // The node's name from the downward API, in the variable twill reads for --node-name.
    let env = agent["env"].as_sequence().expect("env");
    let node_name = env
        .iter()
        .find(|e| e["name"] == "TWILL_NODE_NAME")
        .expect("TWILL_NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    // /run/flannel and the state directory from the host.
    let mounts: BTreeSet<String> = agent["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("path").to_string())
        .collect();
    assert!(mounts.contains("/run/flannel"), "{mounts:?}");
    assert!(mounts.contains("/var/lib/twill"), "{mounts:?}");

    // The init step installs the CNI plugin into the host's CNI directories, with no
    // capability at all.
    let init = &pod["initContainers"][0];
    let args = strings(&init["args"]);
    assert_eq!(args[0], "install-cni");
    assert_eq!(
        strings(&init["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert!(init["securityContext"]["capabilities"].get("add").is_none());
    let host_paths: BTreeSet<String> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(String::from))
        .collect();
    for p in [
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/run/flannel",
        "/var/lib/twill",
    ] {
        assert!(host_paths.contains(p), "{p} in {host_paths:?}");
    }
}

#[test]
fn the_controller_member_ids_peers_and_services_agree() {
    let docs = all_documents();
    let sts = object(&docs, "StatefulSet", "twill-controller");
    let spec = &sts["spec"];
    let replicas = spec["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3);
    // twill refuses member id 0: ordinals start at 1 so the pod index is the member id.
    assert_eq!(spec["ordinals"]["start"], 1);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["nodeSelector"]["node-role.kubernetes.io/control-plane"],
        ""
    );
    assert!(!spec["volumeClaimTemplates"]
        .as_sequence()
        .expect("claims")
        .is_empty());
    let c = &pod["containers"][0];
    let env = c["env"].as_sequence().expect("env");
    let id = env
        .iter()
        .find(|e| e["name"] == "TWILL_ID")
        .expect("TWILL_ID");
    assert_eq!(
        id["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );

    // One --peer per member, each through that member's own Service, which selects exactly
    // that pod and publishes it before it is ready.
    let args = strings(&c["args"]);
    let peers: Vec<&String> = args.iter().filter(|a| a.starts_with("--peer=")).collect();
    assert_eq!(peers.len() as u64, replicas);
    for n in 1..=replicas {
        let want = format!("--peer={n}=https://$(TWILL_MEMBER_{n}_SERVICE_HOST):7420");
        assert!(args.contains(&want), "{want} in {args:?}");
        let svc = object(&docs, "Service", &format!("twill-member-{n}"));
        assert_eq!(
            svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
            format!("twill-controller-{n}").as_str()
        );
        assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
        assert_eq!(svc["spec"]["ports"][0]["port"], 7420);
    }

    // The governing Service is headless, publishes unready members, and carries `metrics`.
    let headless = object(
        &docs,
        "Service",
        spec["serviceName"].as_str().expect("name"),
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let metrics_env = env
        .iter()
        .find(|e| e["name"] == "TWILL_METRICS_ADDR")
        .expect("TWILL_METRICS_ADDR");
    let metrics_port: u64 = metrics_env["value"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(headless["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .any(|p| p["name"] == "metrics" && p["port"] == metrics_port));

    // The ServiceMonitor (a CRD, so no offline schema: checked here) scrapes `metrics` on the
    // Services its selector picks, and those are the controller's and the agents'.
    let monitor = documents(&dir().join("monitoring/servicemonitor.yaml"));
    let m = &monitor[0];
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(m["kind"], "ServiceMonitor");
    assert_eq!(m["spec"]["endpoints"][0]["port"], "metrics");
    let expr = &m["spec"]["selector"]["matchExpressions"][0];
    let key = expr["key"].as_str().expect("key");
    let values = strings(&expr["values"]);
    let scraped: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter(|d| {
            d["metadata"]["labels"][key]
                .as_str()
                .is_some_and(|v| values.iter().any(|w| w == v))
        })
        .map(|d| d["metadata"]["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(
        scraped,
        ["twill-agent", "twill-controller"].map(String::from).into()
    );
}

/// Every `--flag` in every twill container's arguments, by subcommand.
fn flags_used(docs: &[Value]) -> Vec<(String, String)> {
    let mut used = Vec::new();
    for d in docs {
        let pod = &d["spec"]["template"]["spec"];
        for list in ["containers", "initContainers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                let args = strings(&c["args"]);
                for a in &args[1..] {
                    let flag = a.split('=').next().expect("flag");
                    assert!(flag.starts_with("--"), "{a}: arguments are --flag=value");
                    used.push((args[0].clone(), flag.to_string()));
                }
            }
        }
    }
    used
}

/// (subcommand, variable, arguments) for every TWILL_… variable set in a twill container.
fn twill_env(docs: &[Value]) -> Vec<(String, String, Vec<String>)> {
    let mut found = Vec::new();
    for d in docs {
        let pod = &d["spec"]["template"]["spec"];
        for list in ["containers", "initContainers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                let args = strings(&c["args"]);
                for e in c["env"].as_sequence().into_iter().flatten() {
                    let name = e["name"].as_str().expect("name");
                    if name.starts_with("TWILL_") {
                        found.push((args[0].clone(), name.to_string(), args.clone()));
                    }
                }
            }
        }
    }
    assert!(!found.is_empty());
    found
}

#[test]
fn every_twill_flag_in_the_manifests_is_one_twill_accepts() {
    let twill = twill_binary().expect("twill");
    let used = flags_used(&all_documents());
    let commands: BTreeSet<&String> = used.iter().map(|(c, _)| c).collect();
    assert_eq!(
        commands.into_iter().cloned().collect::<Vec<_>>(),
        ["agent", "controller", "install-cni"]
    );
    let help_text = |cmd: &str| -> String {
        let out = Command::new(&twill)
            .args([cmd, "--help"])
            .output()
            .expect("twill --help");
        assert!(out.status.success(), "twill {cmd} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let help = |cmd: &str| -> BTreeSet<String> {
        help_text(cmd)
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--"))
            .map(String::from)
            .collect()
    };
    let mut unknown = Vec::new();
    for (cmd, flag) in &used {
        if !help(cmd).contains(flag) {
            unknown.push(format!("twill {cmd} {flag}"));
        }
    }
    // Variables named TWILL_… are read by twill itself (the subcommand's, or the CLI's for
    // `kubectl exec … twill token`), unless an argument takes them in as $(NAME).
    let cli = help_text("token");
    for (cmd, name, args) in twill_env(&all_documents()) {
        let expanded = args.iter().any(|a| a.contains(&format!("$({name})")));
        let read = help_text(&cmd).contains(&format!("[env: {name}="))
            || cli.contains(&format!("[env: {name}="));
        if !expanded && !read {
            unknown.push(format!("twill {cmd}: environment {name}"));
        }
    }
    assert!(unknown.is_empty(), "flags twill does not know: {unknown:?}");
    // And the check is not blind: a misspelt flag is not in the help.
    assert!(!help("agent").contains("--metric-addr"));
}
