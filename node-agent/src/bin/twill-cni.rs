//! `twill-cni`: a CNI 1.1 plugin that gives pods addresses from the node's twill subnet by
//! delegating to the standard `bridge` and `host-local` plugins.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use serde_json::{json, Value};
use twill_agent::cni::*;

/// A line on stderr, the spec's place for logs. A closed or broken stderr is ignored:
/// `eprintln!` would panic, and the answer on stdout matters more.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "twill-cni: {}", format_args!($($arg)*));
    }};
}

/// The answer on stdout, ignoring a runtime that stopped reading (`println!` would panic).
fn emit(v: &Value) {
    let _ = writeln!(std::io::stdout(), "{v}");
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn find_plugin(name: &str) -> Result<PathBuf, CniError> {
    for dir in env("CNI_PATH").split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CniError::new(
        ERR_INVALID_CONFIG,
        format!("plugin {name:?} not found in CNI_PATH"),
        env("CNI_PATH"),
    ))
}

/// Runs the delegate for `command` with the same environment and `conf` on stdin; returns its
/// stdout. With `gone`, for that attachment instead of the one in the environment, and with no
/// network namespace: GC's cleanup of attachments whose namespaces the runtime has removed.
fn delegate(conf: &Value, command: &str, gone: Option<&Attachment>) -> Result<Vec<u8>, CniError> {
    let kind = conf.get("type").and_then(Value::as_str).unwrap_or("bridge");
    let plugin = find_plugin(kind)?;
    let mut cmd = Command::new(&plugin);
    cmd.env("CNI_COMMAND", command);
    if let Some(att) = gone {
        cmd.env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_IFNAME", &att.ifname)
            .env_remove("CNI_NETNS");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                ERR_IO,
                format!("cannot run {}", plugin.display()),
                e.to_string(),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| CniError::new(ERR_IO, "cannot write to the delegate", e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(ERR_IO, "delegate failed to run", e.to_string()))?;
    if !out.status.success() {
        // The delegate's own error object is the most useful answer: pass it through.
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(999) as u32;
            let msg = v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("delegate failed");
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            return Err(CniError::new(code, format!("{kind}: {msg}"), details));
        }
        return Err(CniError::new(
            999,
            format!("{kind} failed"),
            String::from_utf8_lossy(&out.stdout),
        ));
    }
    Ok(out.stdout)
}

/// The current `subnet.env` as a delegate configuration: what ADD would save now.
fn current_conf(netconf: &Value, subnet_file: &Path) -> Result<Value, CniError> {
    Ok(delegate_config(netconf, &read_subnet_env(subnet_file)?))
}

/// The attachment's record: the per-interface one, else one the old per-container layout
/// wrote, so attachments made before an upgrade are still deleted and checked.
fn find_record(data_dir: &Path, att: &Attachment) -> (PathBuf, Record) {
    let path = att.record_path(data_dir);
    match read_record(&path) {
        Record::Missing => {
            let legacy = att.legacy_record_path(data_dir);
            let record = read_record(&legacy);
            (legacy, record)
        }
        r => (path, r),
    }
}

/// Undoes an attachment through its record. DEL is best-effort by the spec and a runtime
/// retries a failed one forever, so a damaged record (a crash after ADD, a bad disk) is
/// deleted with a configuration rebuilt from the current `subnet.env` and never fails; what
/// could not be cleaned goes to stderr. A delegate failure with a good record is returned and
/// the record kept, so the retry can finish.
fn release(
    netconf: &Value,
    subnet_file: &Path,
    path: &Path,
    record: Record,
) -> Result<(), CniError> {
    match record {
        Record::Missing => return Ok(()),
        Record::Saved(conf) => {
            delegate(&conf, "DEL", None)?;
        }
        Record::Damaged(why) => {
            log!("{why}; deleting with the configuration from the current subnet.env");
            match current_conf(netconf, subnet_file) {
                Ok(conf) => {
                    if let Err(e) = delegate(&conf, "DEL", None) {
                        log!(
                            "{}: {} {}; the interface or its address may be left behind",
                            path.display(),
                            e.msg,
                            e.details
                        );
                    }
                }
                Err(e) => log!(
                    "{}: nothing to delete with ({}); the interface or its address may be left behind",
                    path.display(),
                    e.msg
                ),
            }
        }
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log!("cannot remove {}: {e}", path.display())
        }
        _ => {}
    }
    Ok(())
}

/// A failed ADD is undone the spec's way, with the delegate's DEL: the bridge plugin leaves
/// the veth it created on cni0 when a later step fails. The record goes too, unless that DEL
/// failed: then the runtime's own DEL, which follows a failed ADD, retries with it.
fn rollback(conf: &Value, saved: &Path) {
    match delegate(conf, "DEL", None) {
        Ok(_) => {
            if let Err(e) = std::fs::remove_file(saved) {
                log!("cannot remove {}: {e}", saved.display());
            }
        }
        Err(e) => log!(
            "undoing the failed ADD: {} {}; {} kept for the next DEL",
            e.msg,
            e.details,
            saved.display()
        ),
    }
}

/// Whether the delegate `kind` speaks spec 1.1.0 (GC and STATUS), by its VERSION answer.
fn speaks_1_1(kind: &str) -> bool {
    let Ok(plugin) = find_plugin(kind) else {
        return false;
    };
    let out = Command::new(plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v.get("supportedVersions").cloned())
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|a| a.contains(&json!("1.1.0")))
}

/// `conf` as a 1.1.0 request, for a delegate that speaks it.
fn as_1_1(conf: &Value) -> Value {
    in_version(conf, "1.1.0")
}

/// GC: every saved attachment of this network the runtime does not list is deleted through its delegate (with
/// no network namespace: the runtime has removed it) and its record removed. The spec asks GC
/// to carry on past failures and report them: a record whose delete failed is kept for the
/// next GC, and the error lists them. Then GC goes on to the delegate, if it speaks 1.1.0.
fn gc(netconf: &Value, data_dir: &Path, subnet_file: &Path) -> Result<(), CniError> {
    let valid = valid_attachments(netconf)?;
    let records = list_records(data_dir).map_err(|e| {
        CniError::new(
            ERR_IO,
            format!("cannot list {}", data_dir.display()),
            e.to_string(),
        )
    })?;
    let network = network_name(netconf);
    let mut failed: Vec<CniError> = Vec::new();
    for (key, path) in records {
        if key.is_valid(&valid) {
            continue;
        }
        let att = key.attachment();
        let conf = match read_record(&path) {
            Record::Missing => continue,
            Record::Saved(conf) if conf.get("name").and_then(Value::as_str) != Some(network) => {
                continue
            }
            Record::Saved(conf) => conf,
            // A damaged record cannot say which network it belongs to: another network sharing
            // the data dir may own it. It is left for the runtime's own DEL of the attachment,
            // which cleans it up (see DEL).
            Record::Damaged(why) => {
                log!("GC: {why}; left for the attachment's DEL (its network is unknown)");
                continue;
            }
        };
        match delegate(&conf, "DEL", Some(&att)) {
            Ok(_) => {}
            Err(e) => {
                failed.push(CniError::new(
                    e.code,
                    format!("{} {}: {}", att.container_id, att.ifname, e.msg),
                    e.details,
                ));
                continue;
            }
        }
        if let Err(e) = std::fs::remove_file(&path) {
            log!("GC: cannot remove {}: {e}", path.display());
        }
    }
    if let Ok(conf) = current_conf(netconf, subnet_file) {
        let kind = conf.get("type").and_then(Value::as_str).unwrap_or("bridge");
        if speaks_1_1(kind) {
            let mut req = as_1_1(&conf);
            let list: Value = valid
                .iter()
                .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
                .collect();
            if let Some(obj) = req.as_object_mut() {
                obj.insert(VALID_ATTACHMENTS.into(), list);
            }
            if let Err(e) = delegate(&req, "GC", None) {
                failed.push(e);
            }
        }
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(CniError::new(
            first.code,
            format!("GC: {} cleanup(s) failed", failed.len()),
            failed
                .iter()
                .map(|e| format!("{} {}", e.msg, e.details))
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// STATUS: ready when ADD could work now, that is subnet.env is there and valid and the
/// delegates are installed; else the spec's 50, saying why. A delegate that speaks 1.1.0 is
/// asked too, as the spec requires.
fn status(netconf: &Value, subnet_file: &Path) -> Result<(), CniError> {
    let unavailable = |e: CniError| {
        CniError::new(
            ERR_NOT_AVAILABLE,
            format!("not ready: {}", e.msg),
            e.details,
        )
    };
    let conf = current_conf(netconf, subnet_file).map_err(unavailable)?;
    let kind = conf.get("type").and_then(Value::as_str).unwrap_or("bridge");
    find_plugin(kind).map_err(unavailable)?;
    if let Some(ipam) = conf
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
    {
        find_plugin(ipam).map_err(unavailable)?;
    }
    if speaks_1_1(kind) {
        delegate(&as_1_1(&conf), "STATUS", None)?;
    }
    Ok(())
}

fn run(netconf: &Value) -> Result<Option<Vec<u8>>, CniError> {
    let cmd = env("CNI_COMMAND");
    let data_dir = PathBuf::from(
        netconf
            .get("dataDir")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_DATA_DIR),
    );
    let subnet_file = PathBuf::from(
        netconf
            .get("subnetFile")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SUBNET_FILE),
    );
    let version = netconf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0");
    let attachment = || Attachment::new(&env("CNI_CONTAINERID"), &env("CNI_IFNAME"));
    match cmd.as_str() {
        "VERSION" => Ok(Some(version_answer(netconf).to_string().into_bytes())),
        "ADD" => {
            let att = attachment()?;
            let conf = current_conf(netconf, &subnet_file)?;
            // Found before anything is saved: a record the delegate could never act on would
            // make every later DEL fail.
            find_plugin(conf.get("type").and_then(Value::as_str).unwrap_or("bridge"))?;
            let saved = att.record_path(&data_dir);
            write_record(&data_dir, &saved, &conf).map_err(|e| {
                CniError::new(
                    ERR_IO,
                    format!("cannot save {}", saved.display()),
                    e.to_string(),
                )
            })?;
            match delegate(&conf, "ADD", None).and_then(|out| {
                // The delegate spoke its own version; the runtime gets the one it asked for.
                let result: Value = serde_json::from_slice(&out).map_err(|e| {
                    CniError::new(
                        ERR_DECODE,
                        "the delegate's result is not JSON",
                        e.to_string(),
                    )
                })?;
                Ok(in_version(&result, version).to_string().into_bytes())
            }) {
                Ok(result) => Ok(Some(result)),
                Err(e) => {
                    rollback(&conf, &saved);
                    Err(e)
                }
            }
        }
        "DEL" => {
            let att = attachment()?;
            let (path, record) = find_record(&data_dir, &att);
            release(netconf, &subnet_file, &path, record)?;
            Ok(None)
        }
        "CHECK" => {
            let att = attachment()?;
            let mut conf = match find_record(&data_dir, &att) {
                (_, Record::Saved(conf)) => conf,
                (_, Record::Missing) => {
                    return Err(CniError::new(
                        ERR_INVALID_ENV,
                        format!(
                            "no record of container {} interface {}",
                            att.container_id, att.ifname
                        ),
                        "",
                    ))
                }
                (_, Record::Damaged(why)) => return Err(CniError::new(ERR_DECODE, why, "")),
            };
            // The runtime's prevResult says its version; the delegate parses it in its own
            // (the saved configuration's, which predates any upgrade of the runtime).
            let dv = conf
                .get("cniVersion")
                .and_then(Value::as_str)
                .unwrap_or(DELEGATE_MAX)
                .to_string();
            if let (Some(prev), Some(obj)) = (netconf.get("prevResult"), conf.as_object_mut()) {
                obj.insert("prevResult".into(), in_version(prev, &dv));
            }
            delegate(&conf, "CHECK", None)?;
            Ok(None)
        }
        "GC" => gc(netconf, &data_dir, &subnet_file).map(|_| None),
        "STATUS" => status(netconf, &subnet_file).map(|_| None),
        "" => Err(CniError::new(
            ERR_INVALID_ENV,
            "CNI_COMMAND is not set: twill-cni is run by a container runtime",
            "",
        )),
        other => Err(CniError::new(
            ERR_INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "",
        )),
    }
}

fn main() -> ExitCode {
    let command = env("CNI_COMMAND");
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        // VERSION's input only says which version to answer in.
        if command != "VERSION" {
            let err = CniError::new(
                ERR_IO,
                "cannot read the network configuration",
                e.to_string(),
            );
            emit(&err.to_json(LATEST));
            return ExitCode::FAILURE;
        }
    }
    let netconf: Value = match serde_json::from_slice(&input) {
        Ok(v) => v,
        Err(_) if command == "VERSION" => json!({}),
        Err(e) => {
            let err = CniError::new(
                ERR_DECODE,
                "network configuration is not JSON",
                e.to_string(),
            );
            emit(&err.to_json(LATEST));
            return ExitCode::FAILURE;
        }
    };
    let version = netconf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0")
        .to_string();
    if command != "VERSION" && !SUPPORTED.contains(&version.as_str()) {
        let err = CniError::new(
            ERR_INCOMPATIBLE_VERSION,
            format!("cniVersion {version} not supported"),
            SUPPORTED.join(", "),
        );
        emit(&err.to_json(&version));
        return ExitCode::FAILURE;
    }
    match run(&netconf) {
        Ok(Some(out)) => {
            let _ = std::io::stdout().write_all(&out);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            emit(&e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}
