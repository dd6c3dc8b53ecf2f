//! Values that stand in for a setting the operator left unset (proto3's zero). The controller
//! fills them in when it accepts a configuration and the agent when it reads one, so each lives
//! here once and the two can never disagree.

/// flannel's port, not IANA's 4789 (RFC 7348): Linux's vxlan driver used 8472 before 4789 was
/// assigned and flannel kept it, so firewall rules written for a flannel cluster keep working.
pub const VXLAN_PORT: u16 = 8472;

/// flannel's VNI: one overlay per cluster needs no more than the first.
pub const VXLAN_VNI: u32 = 1;

/// RFC 4271 §10's suggested hold time (keepalives every 30 s), which most routers also use, so
/// sessions with top-of-rack routers negotiate no surprise.
pub const BGP_HOLD_TIME: u16 = 90;
