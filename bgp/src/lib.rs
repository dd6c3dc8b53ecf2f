//! The BGP speaker (not built yet): wire codec, session FSM, RIBs, best path and route
//! reflection. Nothing here yet; see the project's issue tracker.
