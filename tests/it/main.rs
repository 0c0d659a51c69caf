//! Integration tests on real tokio (one test binary).

mod cli;
mod cluster;
mod cluster_procs;
mod dist;
mod e2e;
mod e2e_cluster;
mod etcd;
mod media;
mod media_server;
mod registry_model;
mod support;
mod turn_policy;
mod wire_backpressure;
mod wire_channels;
mod wire_edge;
mod wire_http;
mod wire_logs;
mod wire_metrics;
mod wire_rooms;
mod wire_tls;
mod wire_transcripts;
