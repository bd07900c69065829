//! Peer exchange (BEP 11) policy for one connection: what to tell the peer
//! and when, and which of the peers it tells us of are worth dialing.
//!
//! Sending follows Transmission's model: the connection remembers what it
//! told the peer; each message adds the torrent's peers it was not told of
//! and drops those gone since, at most [`MAX_ENTRIES`] of each, the first
//! a few seconds after the peer's extension handshake and then once a
//! minute (libtorrent disconnects a peer that sends more than 6 a minute).
//!
//! Receiving is bounded the same way: a message sooner than
//! [`MIN_RECEIVE_INTERVAL`] after the last is ignored, and a peer that keeps
//! flooding is disconnected; addresses that are unusable, ours, the
//! sender's, local ones from a non-local sender, or duplicates are dropped.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::proto::pex::{PexMessage, MAX_ENTRIES};

/// The first message goes this long after the peer's extension handshake.
pub const FIRST_SEND_AFTER: Duration = Duration::from_secs(5);
/// Then one message at most this often (BEP 11).
pub const SEND_EVERY: Duration = Duration::from_secs(60);
/// Messages received sooner than this after the last are ignored.
pub const MIN_RECEIVE_INTERVAL: Duration = Duration::from_secs(45);
/// Messages in the last minute above which the peer is disconnected.
pub const MAX_RECEIVED_PER_MINUTE: usize = 10;
/// Peers remembered as told to one connection (the torrent's peers we
/// tell of are bounded by this too).
pub const MAX_TOLD: usize = 200;

/// A peer we may tell others of: its listen address and BEP 11 flags.
pub type PexEntry = (SocketAddr, u8);

/// What to do with a message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Dial these (already filtered).
    Dial(Vec<SocketAddr>),
    /// Too soon after the last: ignored.
    Ignored,
    /// A flood: disconnect.
    Flood,
}

/// Peer exchange state of one connection.
#[derive(Debug, Clone, Default)]
pub struct PexPeer {
    /// When the next message may go; `None` until the peer said it takes
    /// ut_pex.
    next_send: Option<Duration>,
    /// The peers it was told of (as added, not since dropped).
    told: HashSet<SocketAddr>,
    /// When we accepted the last message.
    last_received: Option<Duration>,
    /// When messages arrived in the last minute (accepted or not).
    recent: Vec<Duration>,
}

impl PexPeer {
    /// The peer's extension handshake named ut_pex at `now`: the first
    /// message goes [`FIRST_SEND_AFTER`] later.
    pub fn enable(&mut self, now: Duration) {
        if self.next_send.is_none() {
            self.next_send = Some(now + FIRST_SEND_AFTER);
        }
    }

    /// The message due at `now` for a peer at `recipient`, given the
    /// torrent's connected peers `view`; `None` when none is due or there is
    /// nothing new. Never tells the peer of itself, nor local addresses
    /// when it is not local itself.
    pub fn outgoing(
        &mut self,
        now: Duration,
        recipient: SocketAddr,
        view: &[PexEntry],
    ) -> Option<PexMessage> {
        if self.next_send.is_none_or(|at| now < at) {
            return None;
        }
        let recipient_local = is_local(recipient.ip());
        let shareable = |addr: &SocketAddr| {
            addr.ip() != recipient.ip() && (recipient_local || !is_local(addr.ip()))
        };
        let current: HashSet<SocketAddr> = view
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| shareable(a))
            .collect();
        let dropped: Vec<SocketAddr> = self
            .told
            .iter()
            .filter(|a| !current.contains(a))
            .take(MAX_ENTRIES)
            .copied()
            .collect();
        for a in &dropped {
            self.told.remove(a);
        }
        let room = MAX_ENTRIES.min(MAX_TOLD.saturating_sub(self.told.len()));
        let added: Vec<PexEntry> = view
            .iter()
            .filter(|(a, _)| shareable(a) && !self.told.contains(a))
            .take(room)
            .copied()
            .collect();
        self.told.extend(added.iter().map(|(a, _)| *a));
        self.next_send = Some(now + SEND_EVERY);
        let message = PexMessage { added, dropped };
        (!message.is_empty()).then_some(message)
    }

    /// A message from the peer at `sender` at `now`; `ours` is our listen
    /// address (port, and the IP the peer sees us at if known).
    pub fn incoming(
        &mut self,
        now: Duration,
        message: &PexMessage,
        sender: SocketAddr,
        ours: &OurAddress,
    ) -> Received {
        self.recent
            .retain(|&t| now.saturating_sub(t) < Duration::from_secs(60));
        self.recent.push(now);
        if self.recent.len() > MAX_RECEIVED_PER_MINUTE {
            return Received::Flood;
        }
        if self
            .last_received
            .is_some_and(|t| now.saturating_sub(t) < MIN_RECEIVE_INTERVAL)
        {
            return Received::Ignored;
        }
        self.last_received = Some(now);
        let sender_local = is_local(sender.ip());
        let mut ips = HashSet::new();
        let peers = message
            .added
            .iter()
            .map(|(a, _)| *a)
            .filter(usable)
            .filter(|a| a.ip() != sender.ip())
            .filter(|a| !ours.is(a))
            .filter(|a| sender_local || !is_local(a.ip()))
            // One port per address (BEP 11): a list of one host's ports is
            // a way to make us scan it.
            .filter(|a| ips.insert(a.ip()))
            .take(MAX_ENTRIES)
            .collect();
        Received::Dial(peers)
    }
}

/// Our own listen address, to never dial ourselves from a peer's list.
#[derive(Debug, Clone, Default)]
pub struct OurAddress {
    /// Our listen port.
    pub port: u16,
    /// Addresses peers told us they see us at (`yourip`).
    pub seen_as: Vec<IpAddr>,
}

impl OurAddress {
    /// Whether `addr` is us: our port on a loopback or unspecified address,
    /// or on an address we are seen at.
    pub fn is(&self, addr: &SocketAddr) -> bool {
        addr.port() == self.port
            && (addr.ip().is_loopback()
                || addr.ip().is_unspecified()
                || self.seen_as.contains(&addr.ip()))
    }
}

/// Whether a peer could be at `addr`.
fn usable(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && ip != IpAddr::from([255; 4])
}

/// Loopback, private, link-local, CGNAT and unique-local addresses: never
/// passed between the internet and a local network.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pex::{FLAG_REACHABLE, FLAG_SEED};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_message_waits_for_the_handshake_then_once_a_minute() {
        let mut p = PexPeer::default();
        let view = [
            (addr("1.1.1.1:1"), FLAG_SEED),
            (addr("2.2.2.2:2"), FLAG_REACHABLE),
        ];
        let me = addr("9.9.9.9:9");
        assert_eq!(p.outgoing(100 * S, me, &view), None, "no ut_pex yet");
        p.enable(100 * S);
        assert_eq!(p.outgoing(104 * S, me, &view), None);
        let first = p.outgoing(105 * S, me, &view).unwrap();
        assert_eq!(first.added, view);
        // Nothing new, and too soon anyway.
        assert_eq!(p.outgoing(110 * S, me, &view), None);
        assert_eq!(p.outgoing(200 * S, me, &view), None, "nothing changed");
        // One left, one came.
        let later = [(addr("2.2.2.2:2"), 0), (addr("3.3.3.3:3"), 0)];
        let m = p.outgoing(300 * S, me, &later).unwrap();
        assert_eq!(m.added, [(addr("3.3.3.3:3"), 0)]);
        assert_eq!(m.dropped, [addr("1.1.1.1:1")]);
    }

    #[test]
    fn never_the_recipient_nor_local_peers_to_a_remote_one_and_at_most_50() {
        let mut p = PexPeer::default();
        p.enable(Duration::ZERO);
        let mut view: Vec<PexEntry> = (0..80u16)
            .map(|i| {
                (
                    SocketAddr::new([8, 8, (i >> 8) as u8, i as u8].into(), 7),
                    0,
                )
            })
            .collect();
        view.push((addr("192.168.1.5:1"), 0));
        view.push((addr("9.9.9.9:1000"), 0));
        let m = p.outgoing(10 * S, addr("9.9.9.9:9"), &view).unwrap();
        assert_eq!(m.added.len(), MAX_ENTRIES);
        assert!(m
            .added
            .iter()
            .all(|(a, _)| a.ip() != addr("9.9.9.9:1").ip()));
        assert!(m.added.iter().all(|(a, _)| !is_local(a.ip())));
        let rest = p.outgoing(100 * S, addr("9.9.9.9:9"), &view).unwrap();
        assert_eq!(rest.added.len(), 30);
        // A local recipient hears of local peers.
        let mut q = PexPeer::default();
        q.enable(Duration::ZERO);
        let m = q
            .outgoing(10 * S, addr("127.0.0.9:9"), &view[80..])
            .unwrap();
        assert_eq!(m.added.len(), 2);
    }

    #[test]
    fn received_peers_are_filtered_and_floods_refused() {
        let ours = OurAddress {
            port: 6881,
            seen_as: vec![addr("5.5.5.5:0").ip()],
        };
        let message = PexMessage {
            added: vec![
                (addr("1.1.1.1:1"), 0),
                (addr("1.1.1.1:2"), 0),      // same host, another port
                (addr("127.0.0.1:6881"), 0), // us
                (addr("5.5.5.5:6881"), 0),   // us, as seen from outside
                (addr("10.0.0.1:5"), 0),     // local, from a remote sender
                (addr("4.4.4.4:4"), 0),      // the sender itself
                (addr("0.0.0.0:5"), 0),
                (addr("2.2.2.2:0"), 0),
                (addr("[2001:db8::1]:3"), 0),
            ],
            dropped: vec![addr("3.3.3.3:3")],
        };
        let mut p = PexPeer::default();
        let sender = addr("4.4.4.4:4000");
        assert_eq!(
            p.incoming(Duration::ZERO, &message, sender, &ours),
            Received::Dial(vec![addr("1.1.1.1:1"), addr("[2001:db8::1]:3")])
        );
        assert_eq!(
            p.incoming(10 * S, &message, sender, &ours),
            Received::Ignored
        );
        assert!(matches!(
            p.incoming(50 * S, &message, sender, &ours),
            Received::Dial(_)
        ));
        // A local sender may name local peers.
        let mut q = PexPeer::default();
        let Received::Dial(peers) =
            q.incoming(Duration::ZERO, &message, addr("127.0.0.2:1"), &ours)
        else {
            panic!("taken");
        };
        assert!(peers.contains(&addr("10.0.0.1:5")));
        assert!(!peers.contains(&addr("127.0.0.1:6881")));
        // More than 10 a minute: a flood.
        let mut r = PexPeer::default();
        let outcomes: Vec<Received> = (0..11)
            .map(|i| r.incoming(i * S, &message, sender, &ours))
            .collect();
        assert_eq!(outcomes.last(), Some(&Received::Flood));
    }
}
