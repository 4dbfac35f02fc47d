//! Cluster consensus: openraft over our durable log store and the cluster state machine.
#![forbid(unsafe_code)]
