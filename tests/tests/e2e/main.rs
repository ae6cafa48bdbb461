//! End-to-end tests: the real `koi` binary, real plugin processes (the SDK example, Python fixtures
//! and a Python plugin written from `docs/protocol.md`), real pipes and signals. One test binary
//! with a module per area, as in ripgrep.
//!
//! Binaries come from the build the README's test command runs first
//! (`cargo build --workspace --bins --examples`).

mod support;

mod certmesh;
mod certmesh_caswap;
mod certmesh_cli;
mod certmesh_crash;
mod certmesh_devices;
mod certmesh_dos;
mod certmesh_failover;
mod certmesh_failover_rogue;
mod certmesh_flood;
mod certmesh_heartbeat;
mod certmesh_leave;
mod certmesh_names;
mod certmesh_ownership;
mod certmesh_push;
mod certmesh_renew;
mod certmesh_rotate;
mod certmesh_service;
mod certmesh_standby;
mod certmesh_standby_crash;
mod cli;
mod daemon;
mod dns;
mod escapes;
mod events_order;
mod health;
mod host_death;
mod keystrokes;
mod lab_switch;
mod mdns_ownership;
mod misbehaviour;
mod ordered_events;
mod prompts_daemon;
mod protocol_bugs;
mod protocol_features;
mod proxy;
mod pyhello;
mod rendering;
mod sdk_example;
mod sdk_runtime;
