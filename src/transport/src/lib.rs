//! Node-to-node RPC over mutual TLS under the cluster CA.
//!
//! Owns: the cluster PKI (CA creation, node certificate issue, peer identity), TLS 1.3 configs
//! that accept only peers holding a certificate from *this* cluster's CA, the wire framing
//! (length-prefixed frames with request ids, bounded size), a multiplexing client with a bounded
//! number of requests in flight, credit-based streaming for large transfers, reconnect and
//! timeouts, and a server that dispatches typed requests to a [`Handler`].
//!
//! Must never: decode peer bytes without a size bound, panic on peer input, buffer without a
//! bound, or talk to a peer whose certificate does not chain to the cluster CA.
#![forbid(unsafe_code)]

mod client;
mod codec;
mod error;
mod frame;
mod pki;
mod server;
mod stream;
mod tls;
mod writer;

pub use client::{Client, ClientConfig};
pub use codec::{decode, encode};
pub use error::Error;
pub use frame::{Frame, FrameKind, FRAME_HEADER_BYTES};
pub use pki::{node_id_from_cert, node_server_name, ClusterCa, NodeIdentity, CLUSTER_SERVER_NAME};
pub use server::{Batch, Handler, RemoteError, Server, ServerConfig, ServerHandle, MAX_BATCH};
pub use stream::StreamRx;
pub use tls::{
    client_tls_config, join_client_tls_config, join_server_tls_config, server_tls_config,
};

/// Node ids are small integers allocated by the cluster (the raft node id).
pub type NodeId = u64;

/// Hard ceiling for any frame, whatever the configuration says.
pub const MAX_FRAME_BYTES_LIMIT: u32 = 64 * 1024 * 1024;

/// Bytes read from a connection's socket at a time. rustls asks its transport for at most
/// 4 KiB per read, which made one `recv` per 4 KiB; reading through this buffer takes whatever
/// the socket holds in one call (many frames when the peer batched them).
const SOCKET_READ_BUF_BYTES: usize = 64 * 1024;

/// A socket whose reads are buffered (writes pass straight through, vectored).
pub(crate) fn read_buffered(
    tcp: tokio::net::TcpStream,
) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(SOCKET_READ_BUF_BYTES, tcp)
}
