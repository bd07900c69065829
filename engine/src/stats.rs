//! Counters of the data plane, per torrent and per worker. Workers add into
//! them from their own tallies once a second (not per block), so counting
//! costs the hot path nothing; any thread may read a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares the counters once: the live atomics, their snapshot, a worker's
/// tally, and the name and help text each is exported under. Gauges are
/// tallied as signed changes (a wrapping add of an `i64`).
macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $name:ident : $kind:ident, )+) => {
        /// Live counters; see [`StatsSnapshot`] for their meaning.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $name: AtomicU64, )+
        }

        /// A copy of [`Counters`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])+ pub $name: u64, )+
        }

        /// A worker's tally since its last flush; gauges are signed changes.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsDelta {
            $( $(#[doc = $doc])+ pub $name: counters!(@delta $kind), )+
        }

        impl std::ops::AddAssign for StatsSnapshot {
            fn add_assign(&mut self, o: Self) {
                $( self.$name += o.$name; )+
            }
        }

        impl Counters {
            /// Adds a worker's tally.
            pub fn add(&self, d: &StatsDelta) {
                // A gauge's negative change wraps around: adding it in
                // two's complement subtracts.
                $( self.$name.fetch_add(d.$name as u64, Ordering::Relaxed); )+
            }

            /// The counters now.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )+
                }
            }
        }

        impl StatsSnapshot {
            /// Every figure with its name, help text and whether it is a
            /// gauge (a level) rather than a counter (a running total):
            /// what metrics exporters list.
            pub fn fields(&self) -> Vec<StatField> {
                vec![$(
                    StatField {
                        name: stringify!($name),
                        help: concat!($($doc),+).trim_start(),
                        gauge: counters!(@is_gauge $kind),
                        value: self.$name,
                    },
                )+]
            }
        }
    };
    (@delta counter) => { u64 };
    (@delta gauge) => { i64 };
    (@is_gauge counter) => { false };
    (@is_gauge gauge) => { true };
}

/// One figure of a [`StatsSnapshot`], for exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatField {
    /// The field's name, e.g. `bytes_sent`.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// A level that goes up and down, rather than a running total.
    pub gauge: bool,
    /// Its value.
    pub value: u64,
}

counters! {
    /// Bytes written to peers (messages and blocks).
    bytes_sent: counter,
    /// Blocks (piece messages) sent in full.
    blocks_sent: counter,
    /// Peers connected now (after the handshake).
    peers: gauge,
    /// Peers we unchoke now (updated once a second).
    unchoked: gauge,
    /// Connections accepted.
    connections_accepted: counter,
    /// Requests refused (choked, queue full, cancelled).
    rejected_requests: counter,
    /// Connections closed for breaking the protocol.
    protocol_errors: counter,
    /// Connections whose first bytes were not a plain BitTorrent handshake,
    /// with encryption off (they are mostly MSE attempts, which clients
    /// retry in plain text).
    not_bittorrent: counter,
    /// Connections that reached their torrent in plain BitTorrent.
    connections_plain: counter,
    /// Connections that reached their torrent after an MSE handshake, in
    /// plain text after it (crypto_plaintext: blocks still sent zero-copy).
    connections_mse_plaintext: counter,
    /// Connections that reached their torrent after an MSE handshake, RC4
    /// both ways.
    connections_mse_rc4: counter,
    /// Plaintext handshakes refused because encryption is required.
    plaintext_refused: counter,
    /// MSE handshakes failed: the peer's public key was degenerate.
    mse_failed_bad_key: counter,
    /// MSE handshakes failed: no synchronisation hash (or verification
    /// constant) within the padding allowed: garbage, or not MSE.
    mse_failed_no_sync: counter,
    /// MSE handshakes failed: the peer named no torrent we serve.
    mse_failed_unknown_torrent: counter,
    /// MSE handshakes failed: a wrong verification constant.
    mse_failed_bad_vc: counter,
    /// MSE handshakes failed: padding longer than 512 bytes.
    mse_failed_bad_pad: counter,
    /// MSE handshakes failed: no method (RC4 or plaintext) both sides
    /// accept, or the peer chose one we did not offer.
    mse_failed_no_common_method: counter,
    /// MSE handshakes failed: an initial payload longer than allowed.
    mse_failed_bad_payload: counter,
    /// MSE handshakes that never finished: the peer closed the connection
    /// or ran out of time in the middle.
    mse_failed_incomplete: counter,
    /// ut_metadata pieces served.
    metadata_pieces_served: counter,
    /// Peer exchange (ut_pex) messages sent.
    pex_sent: counter,
    /// Peer exchange messages received.
    pex_received: counter,
    /// Peer exchange messages ignored: sooner than 45 s after the last.
    pex_ignored: counter,
    /// Peers learned through peer exchange and handed to the dialer (new
    /// to this worker, filtered, at most 200 per torrent).
    pex_peers_dialed: counter,
    /// Connections refused by a limit or dropped with their torrent.
    dropped_connections: counter,
    /// Connections still in their handshake closed to make room for new
    /// ones (the process held its connection cap, or ran out of
    /// descriptors).
    evicted_handshakes: counter,
    /// Accepts that failed (out of descriptors or memory).
    accept_errors: counter,
    /// Bytes of blocks received that we had asked for.
    bytes_received: counter,
    /// Blocks received that we had asked for.
    blocks_received: counter,
    /// Blocks to send that were not in the page cache (they wait for a
    /// prefetch rather than stall the worker on a fault).
    cache_misses: counter,
    /// Prefetches issued for cold blocks (one covers many blocks).
    prefetches: counter,
    /// Operations submitted to the worker's io_uring.
    ring_submissions: counter,
    /// Completions reaped from the worker's io_uring.
    ring_completions: counter,
}

impl StatsDelta {
    /// Whether there is anything to flush.
    pub fn is_empty(&self) -> bool {
        *self == StatsDelta::default()
    }
}
