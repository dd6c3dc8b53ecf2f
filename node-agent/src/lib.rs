//! The node agent's library.
//!
//! - [`desired`]: the kernel objects a node should have, as a plain function of its own lease,
//!   its peers' leases, the backend and local facts (no root, no sockets);
//! - [`vtep`]: the node's VXLAN MAC, stable across restarts and distinct between nodes;
//! - [`subnet_env`]: flannel's `subnet.env`, rendered and written atomically.
//!
//! - [`reconcile`]: what twill owns in the kernel, read through netlink, the plan to the
//!   desired state, and its ordered application;
//! - [`facts`]: choosing the public interface and address;
//! - [`lease`]: holding the node's lease; [`watch`]: following the lease stream;
//! - [`certs`]: the node certificate, from the state directory or a join token;
//! - [`masquerade`]: pod egress masquerade in an nftables table of twill's own;
//! - [`forward`]: pod traffic accepted in a FORWARD chain that drops (Docker's);
//! - [`backend`]: the dataplanes (vxlan, host-gw, bgp) behind one seam;
//! - [`install`]: `twill install-cni`, the plugin and its configuration put in place;
//! - [`health`]: readiness, derived from the agent's state when asked;
//! - [`metrics`]: the agent's Prometheus metrics;
//! - [`settings`]: the agent's settings, saved for `twill doctor`;
//! - [`doctor`]: what `twill doctor` finds, from facts gathered read-only;
//! - [`agent`]: the event loop that ties it together.
//!
//! The namespace sandbox lives in its own crate (`twill-sandbox`), never in the agent.

pub mod agent;
pub mod backend;
pub mod bgp;
pub mod certs;
pub mod cni;
pub mod desired;
pub mod doctor;
pub mod facts;
pub mod forward;
pub mod health;
pub mod install;
pub mod lease;
pub mod masquerade;
pub mod metrics;
pub mod reconcile;
pub mod settings;
pub mod source_tables;
pub mod subnet_env;
pub mod vtep;
pub mod watch;
