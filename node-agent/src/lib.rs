//! The node agent (not built yet): it will hold the node's lease, follow the lease stream,
//! compute the desired kernel state and program VXLAN or host-gw routes through netlink.
//! Nothing here yet; see the project's issue tracker.
