//! The node agent's library. Built so far: the pure parts.
//!
//! - [`desired`]: the kernel objects a node should have, as a plain function of its own lease,
//!   its peers' leases, the backend and local facts (no root, no sockets);
//! - [`vtep`]: the node's VXLAN MAC, stable across restarts and distinct between nodes;
//! - [`subnet_env`]: flannel's `subnet.env`, rendered and written atomically.
//!
//! Not built yet: the lease keeper, the watch client, the netlink reconciler and `twill agent`.

pub mod desired;
pub mod reconcile;
pub mod subnet_env;
pub mod vtep;
