//! `twill install-cni`, and the agent's `--install-cni`: the plugin and its configuration put
//! where container runtimes look, or taken away again.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use twill_agent::install::{self, Options};

/// Where the plugin and its configuration go; shared by `install-cni` and `agent --install-cni`.
#[derive(Args, Clone, Debug)]
pub struct CniPlaces {
    /// Directory the runtime finds CNI plugins in (kubelet/containerd: /opt/cni/bin)
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_BIN_DIR)]
    pub cni_bin_dir: PathBuf,
    /// Directory the runtime reads network configurations from; it uses the first file by name
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// The configuration list's file name (ending in .conflist)
    #[arg(long, value_name = "FILE", default_value = install::DEFAULT_CONF_NAME)]
    pub cni_conf_name: String,
    /// The network's name in the configuration list
    #[arg(long, value_name = "NAME", default_value = install::DEFAULT_NETWORK_NAME)]
    pub cni_network_name: String,
    /// Where the record of what was written is kept (what --uninstall reads)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/twill/cni-install.json"
    )]
    pub cni_record: PathBuf,
}

#[derive(Args, Debug)]
pub struct InstallCniArgs {
    #[command(flatten)]
    places: CniPlaces,
    /// The subnet file the agent writes and the plugin reads
    #[arg(long, value_name = "FILE", default_value = twill_agent::cni::DEFAULT_SUBNET_FILE)]
    subnet_file: PathBuf,
    /// The twill-cni binary to install [default: the one next to this twill]
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// Remove what an earlier install wrote instead, file by file, only where the file is still
    /// exactly as written (a file changed since is left, and said so)
    #[arg(long)]
    uninstall: bool,
}

fn options(p: &CniPlaces, subnet_file: PathBuf, plugin: Option<PathBuf>) -> Result<Options> {
    let plugin = match plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locate the twill binary")?
            .with_file_name(install::PLUGIN),
    };
    Ok(Options {
        plugin,
        bin_dir: p.cni_bin_dir.clone(),
        conf_dir: p.cni_conf_dir.clone(),
        conf_name: p.cni_conf_name.clone(),
        network_name: p.cni_network_name.clone(),
        subnet_file,
        record: p.cni_record.clone(),
    })
}

/// Installs and says what happened, one line per file and one per configuration that would
/// be read before ours.
pub fn install(p: &CniPlaces, subnet_file: PathBuf, plugin: Option<PathBuf>) -> Result<()> {
    let o = options(p, subnet_file, plugin)?;
    let (changes, earlier) = install::install(&o).context("install the CNI plugin")?;
    for c in changes {
        tracing::info!("install-cni: {c}");
        println!("{c}");
    }
    for f in earlier {
        let msg = format!(
            "{} sorts before {} and runtimes use the first: remove it (e.g. flannel's, when migrating) or name ours earlier with --cni-conf-name",
            f.display(),
            o.conf_name
        );
        tracing::warn!("install-cni: {msg}");
        eprintln!("twill: warning: {msg}");
    }
    Ok(())
}

pub fn run(a: InstallCniArgs) -> Result<()> {
    if a.uninstall {
        let o = options(&a.places, a.subnet_file, a.plugin)?;
        let changes = install::uninstall(&o).context("uninstall the CNI plugin")?;
        if changes.is_empty() {
            println!(
                "nothing of twill's to remove (no record at {})",
                o.record.display()
            );
        }
        for c in changes {
            println!("{c}");
        }
        return Ok(());
    }
    install(&a.places, a.subnet_file, a.plugin)
}
