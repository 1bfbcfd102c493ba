//! `cartwright-sim`: a deterministic discrete-event simulator running the core decisions with a simulated
//! cloud, a simulated kube-scheduler and a virtual clock.
//!
//! Nothing is here yet; `cartwright simulate` says so plainly until the simulator issue lands.
#![forbid(unsafe_code)]
