//! Counters of the data plane, per torrent and per worker. Workers add into
//! them from their own tallies once a second (not per block), so counting
//! costs the hot path nothing; any thread may read a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; see [`StatsSnapshot`] for their meaning.
#[derive(Debug, Default)]
pub struct Counters {
    bytes_sent: AtomicU64,
    blocks_sent: AtomicU64,
    peers: AtomicU64,
    connections_accepted: AtomicU64,
    rejected_requests: AtomicU64,
    protocol_errors: AtomicU64,
    metadata_pieces_served: AtomicU64,
    dropped_connections: AtomicU64,
    bytes_received: AtomicU64,
    blocks_received: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Bytes written to peers (messages and blocks).
    pub bytes_sent: u64,
    /// Blocks (piece messages) sent in full.
    pub blocks_sent: u64,
    /// Peers connected now (after the handshake).
    pub peers: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Requests refused (choked, queue full, cancelled).
    pub rejected_requests: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// ut_metadata pieces served.
    pub metadata_pieces_served: u64,
    /// Connections refused by a limit or dropped with their torrent.
    pub dropped_connections: u64,
    /// Bytes of blocks received that we had asked for.
    pub bytes_received: u64,
    /// Blocks received that we had asked for.
    pub blocks_received: u64,
}

impl std::ops::AddAssign for StatsSnapshot {
    fn add_assign(&mut self, o: Self) {
        self.bytes_sent += o.bytes_sent;
        self.blocks_sent += o.blocks_sent;
        self.peers += o.peers;
        self.connections_accepted += o.connections_accepted;
        self.rejected_requests += o.rejected_requests;
        self.protocol_errors += o.protocol_errors;
        self.metadata_pieces_served += o.metadata_pieces_served;
        self.dropped_connections += o.dropped_connections;
        self.bytes_received += o.bytes_received;
        self.blocks_received += o.blocks_received;
    }
}

impl Counters {
    /// Adds a worker's tally; `peers` is a signed change.
    pub fn add(&self, d: &StatsDelta) {
        let r = Ordering::Relaxed;
        self.bytes_sent.fetch_add(d.bytes_sent, r);
        self.blocks_sent.fetch_add(d.blocks_sent, r);
        self.peers.fetch_add(d.peers as u64, r); // wrapping add of a signed delta
        self.connections_accepted
            .fetch_add(d.connections_accepted, r);
        self.rejected_requests.fetch_add(d.rejected_requests, r);
        self.protocol_errors.fetch_add(d.protocol_errors, r);
        self.metadata_pieces_served
            .fetch_add(d.metadata_pieces_served, r);
        self.dropped_connections.fetch_add(d.dropped_connections, r);
        self.bytes_received.fetch_add(d.bytes_received, r);
        self.blocks_received.fetch_add(d.blocks_received, r);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = Ordering::Relaxed;
        StatsSnapshot {
            bytes_sent: self.bytes_sent.load(r),
            blocks_sent: self.blocks_sent.load(r),
            peers: self.peers.load(r),
            connections_accepted: self.connections_accepted.load(r),
            rejected_requests: self.rejected_requests.load(r),
            protocol_errors: self.protocol_errors.load(r),
            metadata_pieces_served: self.metadata_pieces_served.load(r),
            dropped_connections: self.dropped_connections.load(r),
            bytes_received: self.bytes_received.load(r),
            blocks_received: self.blocks_received.load(r),
        }
    }
}

/// A worker's tally since its last flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsDelta {
    /// See [`StatsSnapshot::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`StatsSnapshot::blocks_sent`].
    pub blocks_sent: u64,
    /// Change in connected peers.
    pub peers: i64,
    /// See [`StatsSnapshot::connections_accepted`].
    pub connections_accepted: u64,
    /// See [`StatsSnapshot::rejected_requests`].
    pub rejected_requests: u64,
    /// See [`StatsSnapshot::protocol_errors`].
    pub protocol_errors: u64,
    /// See [`StatsSnapshot::metadata_pieces_served`].
    pub metadata_pieces_served: u64,
    /// See [`StatsSnapshot::dropped_connections`].
    pub dropped_connections: u64,
    /// See [`StatsSnapshot::bytes_received`].
    pub bytes_received: u64,
    /// See [`StatsSnapshot::blocks_received`].
    pub blocks_received: u64,
}

impl StatsDelta {
    /// Whether there is anything to flush.
    pub fn is_empty(&self) -> bool {
        *self == StatsDelta::default()
    }
}
